"""`aesr1.serve`: an HTTP scoring service with a web page, around one `aesr1.score.Scorer`.

    python -m aesr1.serve --model <dir> --mode expected --scale 1-10     # or: aesr1 serve ...

    from aesr1.score import Scorer
    from aesr1.serve import ServeConfig, create_app
    app = create_app(Scorer("path/to/model"), ServeConfig(max_batch_size=16))   # any ASGI server

Modules: `app` (the FastAPI application and its endpoints), `batching` (the queue and the worker
thread that owns the model), `inputs` (images from multipart, base64 JSON or allowed paths),
`limits` (body size limit, API key), `errors` (JSON error answers), `metrics` (Prometheus),
`config` (`ServeConfig`). Needs the `serve` extra: ``pip install 'aesr1[train,serve]'``.
"""

from __future__ import annotations

from typing import Any

from aesr1.serve.config import ServeConfig


def __getattr__(name: str) -> Any:
    # Imported on first use: `python -m aesr1.serve` can then say which extra is missing instead of
    # failing on `import fastapi` before its own code runs.
    if name == "create_app":
        from aesr1.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'aesr1.serve' has no attribute {name!r}")


__all__ = ["ServeConfig", "create_app"]
