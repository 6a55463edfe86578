"""`aesr1 serve --model <dir>` (or `python -m aesr1.serve ...`): the HTTP scoring service with its web
page. Takes the scoring flags of `aesr1 score` (`--mode`, `--preset`, `--scale`, ...); see
`aesr1.serve.app` for the endpoints and `aesr1.serve.config.ServeConfig` for the limits.

Exit status: 2 for bad arguments, found before the model loads; 1 when the serve or train extra is
missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from aesr1.serve.config import MIB, ServeConfig

PROG = "python -m aesr1.serve"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    from aesr1.score.__main__ import add_scoring_arguments

    defaults = ServeConfig()
    parser = argparse.ArgumentParser(
        prog=prog,
        description="HTTP scoring service: POST /v1/score, POST /v1/compare, GET /healthz, GET /metrics, "
        "and a scoring page at /. One worker owns the model; concurrent requests are batched.",
    )
    add_scoring_arguments(parser)
    server = parser.add_argument_group("server")
    server.add_argument("--host", default=defaults.host, help="address to listen on (default: %(default)s)")
    server.add_argument("--port", type=int, default=defaults.port, help="(default: %(default)s)")
    # The same destination as --batch-size, which means the same for the Scorer.
    server.add_argument(
        "--max-batch-size", dest="batch_size", metavar="N", type=int, default=defaults.max_batch_size,
        help="images gathered from concurrent requests into one model call; the same as --batch-size "
        "(default: %(default)s)",
    )  # fmt: skip
    server.add_argument(
        "--max-wait-ms", type=float, default=defaults.max_wait_ms,
        help="how long a request waits for others to share its batch (default: %(default)s)",
    )  # fmt: skip
    server.add_argument(
        "--max-queue", type=int, default=defaults.max_queue,
        help="images that may wait; more are answered 429 (default: %(default)s)",
    )  # fmt: skip
    server.add_argument(
        "--max-images", type=int, default=defaults.max_images_per_request,
        help="images per request (default: %(default)s)",
    )  # fmt: skip
    server.add_argument(
        "--max-body-mb", type=float, default=defaults.max_body_bytes / MIB,
        help="request body limit in MiB (default: %(default)s)",
    )  # fmt: skip
    server.add_argument(
        "--max-image-mb", type=float, default=defaults.max_image_bytes / MIB,
        help="encoded image size limit in MiB (default: %(default)s)",
    )  # fmt: skip
    server.add_argument(
        "--timeout", type=float, default=defaults.timeout_s,
        help="seconds a request may wait for its scores, else 504 (default: %(default)s)",
    )  # fmt: skip
    server.add_argument(
        "--allow-paths", metavar="DIR",
        help="let requests name images by path inside DIR (default: uploads only)",
    )  # fmt: skip
    server.add_argument(
        "--api-key-env", metavar="NAME",
        help="require the API key held by environment variable NAME on /v1/* (default: no key)",
    )  # fmt: skip
    server.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    return parser


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The `ServeConfig` of the server flags (raises ValueError)."""
    return ServeConfig(
        host=args.host,
        port=args.port,
        max_batch_size=args.batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_images_per_request=args.max_images,
        max_body_bytes=round(args.max_body_mb * MIB),
        max_image_bytes=round(args.max_image_mb * MIB),
        timeout_s=args.timeout,
        allow_paths=args.allow_paths,
        api_key_env=args.api_key_env,
    )


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(prog).parse_args(argv)
    # The import names of the serve extra, and of the train extra's model stack.
    needed = ("fastapi", "uvicorn", "python_multipart", "prometheus_client", "torch", "transformers")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"error: {prog} needs the train and serve extras (missing: {', '.join(missing)}): "
            "pip install 'aesr1[train,serve]'",
            file=sys.stderr,
        )
        return 1
    import uvicorn

    from aesr1.score.__main__ import scorer_from_args
    from aesr1.serve.app import create_app
    from aesr1.serve.limits import read_api_key

    try:
        config = config_from_args(args)
        # Checked before the model loads: a wrong flag should fail in seconds, not minutes.
        read_api_key(config.api_key_env)
        if config.allow_paths is not None and not os.path.isdir(config.allow_paths):
            raise ValueError(f"--allow-paths {config.allow_paths!r} is not a folder")
        scorer = scorer_from_args(args)
        app = create_app(scorer, config)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=config.host, port=config.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
