"""`create_app(scorer, config)`: the FastAPI application of the scoring service.

Endpoints:

- ``POST /v1/score``: one or more images (multipart files ``image``, or JSON ``{"images": [...]}``
  with base64 data or allowed paths) → ``{"results": [row, ...]}``, each row
  `aesr1.score.ScoreResult.to_dict()`, in the order sent.
- ``POST /v1/compare``: images ``a`` and ``b`` → `aesr1.score.compare.Comparison.to_dict()`
  (P(a more aesthetic than b), Eq. 3) with ``winner`` ("a" or "b") and both rows in ``results``.
- ``GET /healthz``: the model, its mode, scale and preset, the queue depth; 503 once shutting down.
- ``GET /metrics``: Prometheus text (`aesr1.serve.metrics`).
- ``GET /``: the scoring page (`page.html`).

The API key, when configured, guards ``/v1/*``; the page, ``/healthz`` and ``/metrics`` stay open for
browsers, probes and scrapers (they show no images or scores).
"""

from __future__ import annotations

import asyncio
import os
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from aesr1.score.compare import compare
from aesr1.serve.batching import Batcher, QueueFull, ShuttingDown
from aesr1.serve.config import ServeConfig
from aesr1.serve.errors import ApiError, install_error_handlers
from aesr1.serve.inputs import compare_entries, decode, score_entries
from aesr1.serve.limits import BodyLimitMiddleware, check_api_key, read_api_key
from aesr1.serve.metrics import Metrics, MetricsMiddleware

ENDPOINTS = ("/", "/healthz", "/metrics", "/v1/score", "/v1/compare")


def page_html() -> str:
    """The scoring page, shipped as package data."""
    return resources.files("aesr1.serve").joinpath("page.html").read_text(encoding="utf-8")


def create_app(scorer: Any, config: ServeConfig | None = None) -> FastAPI:
    """The scoring service around `scorer` (an `aesr1.score.Scorer`, whose mode, preset and scale
    every result has). One worker thread owns the scorer from startup to shutdown (the app's
    lifespan); at shutdown it scores what is queued before it stops.

    Raises ValueError when `config.api_key_env` names an unset variable or `config.allow_paths` is
    not a folder.
    """
    config = config or ServeConfig()
    api_key = read_api_key(config.api_key_env)
    if config.allow_paths is not None and not os.path.isdir(config.allow_paths):
        raise ValueError(f"allow_paths {config.allow_paths!r} is not a folder")
    batcher = Batcher(
        scorer, max_batch_size=config.max_batch_size, max_wait_s=config.max_wait_ms / 1000,
        max_queue=config.max_queue,
    )  # fmt: skip
    metrics = Metrics(lambda: batcher.queue_depth, ENDPOINTS)
    batcher.on_batch = metrics.observe_batch
    page = page_html()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await run_in_threadpool(batcher.close)

    app = FastAPI(
        title="aesr1 scoring service", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.batcher, app.state.metrics, app.state.config, app.state.scorer = (
        batcher,
        metrics,
        config,
        scorer,
    )
    install_error_handlers(app)
    # The last middleware added runs first: metrics also count the body limit's 413s.
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    async def results_of(images: list[Any], names: list[str], start: float) -> list[Any]:
        """The scores of `images`, through the queue; 429 when it is full, 504 past the timeout
        (counted from the request's arrival)."""
        try:
            future = batcher.submit(images, names)
        except QueueFull as error:
            raise ApiError(429, f"{error}; retry later", {"Retry-After": str(error.retry_after)}) from None
        except ShuttingDown as error:
            raise ApiError(503, str(error)) from None
        remaining = config.timeout_s - (time.monotonic() - start)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), max(remaining, 0.0))
        except asyncio.TimeoutError:
            raise ApiError(
                504, f"no result within the request timeout of {config.timeout_s:g} s "
                f"({batcher.queue_depth} images waiting)",
            ) from None  # fmt: skip
        except Exception as error:
            raise ApiError(500, f"scoring failed: {type(error).__name__}: {error}") from None

    @app.post("/v1/score")
    async def score(request: Request) -> JSONResponse:
        start = time.monotonic()
        check_api_key(request, api_key)
        entries = await score_entries(request, config)
        images = await decode(entries, config)
        results = await results_of(images, [entry.name for entry in entries], start)
        return JSONResponse({"results": [result.to_dict() for result in results]})

    @app.post("/v1/compare")
    async def compare_images(request: Request) -> JSONResponse:
        start = time.monotonic()
        check_api_key(request, api_key)
        a, b = await compare_entries(request, config)
        images = await decode([a, b], config)
        result_a, result_b = await results_of(images, [a.name, b.name], start)
        try:
            comparison = compare(result_a, result_b)
        except ValueError as error:  # an image without a score (no answer parsed)
            raise ApiError(422, str(error)) from None
        return JSONResponse(
            {
                **comparison.to_dict(),
                "winner": "a" if comparison.probability >= 0.5 else "b",
                "results": [result_a.to_dict(), result_b.to_dict()],
            }
        )

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        running = batcher.running and not batcher.closing
        return JSONResponse(
            {
                "status": "ok" if running else "stopping",
                "model": scorer.model_path,
                "revision": scorer.revision,
                "mode": scorer.mode,
                "scale": scorer.scale.name,
                "preset": scorer.preset.name,
                "max_batch_size": config.max_batch_size,
                "max_images_per_request": config.max_images_per_request,
                "queue_depth": batcher.queue_depth,
                "api_key_required": api_key is not None,
            },
            status_code=200 if running else 503,
        )

    @app.get("/metrics")
    async def metrics_text() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/")
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    return app


__all__ = ["ENDPOINTS", "create_app", "page_html"]
