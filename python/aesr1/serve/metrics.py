"""Prometheus metrics of the scoring service, in a registry of its own (two apps in one process do not
share counters), served as text at ``GET /metrics``.

- ``aesr1_serve_requests_total{endpoint, status}``: answered requests.
- ``aesr1_serve_errors_total{endpoint, status}``: those answered with a 4xx or 5xx status.
- ``aesr1_serve_request_seconds{endpoint}``: latency histogram, from the request's arrival to its
  answer.
- ``aesr1_serve_queue_depth``: images waiting for the model.
- ``aesr1_serve_batch_size``: histogram of images per model call.
- ``aesr1_serve_batch_seconds``: histogram of model call durations.
- ``aesr1_serve_images_total``: images scored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Latency buckets (seconds): from a cached page to a long queue on a CPU.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
#: Batch size buckets (images).
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)


class Metrics:
    """The service's metrics; `queue_depth` is read at each scrape."""

    def __init__(self, queue_depth: Callable[[], float], endpoints: Iterable[str]):
        self.registry = CollectorRegistry(auto_describe=True)
        self.endpoints = frozenset(endpoints)
        labels = ("endpoint", "status")
        self.requests = Counter(
            "aesr1_serve_requests", "Answered HTTP requests.", labels, registry=self.registry
        )
        self.errors = Counter(
            "aesr1_serve_errors",
            "Requests answered with a 4xx or 5xx status.",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            "aesr1_serve_request_seconds", "Seconds from a request's arrival to its answer.", ("endpoint",),
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "aesr1_serve_queue_depth", "Images waiting for the model.", registry=self.registry
        )
        self.queue_depth.set_function(queue_depth)
        self.batch_size = Histogram(
            "aesr1_serve_batch_size", "Images per model call.", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.batch_seconds = Histogram(
            "aesr1_serve_batch_seconds", "Seconds per model call.", buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.images = Counter("aesr1_serve_images", "Images scored.", registry=self.registry)

    def endpoint(self, path: str) -> str:
        """The label of a request path: the path of a known endpoint, else "other" (unknown paths
        would otherwise make one time series each)."""
        return path if path in self.endpoints else "other"

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        endpoint = self.endpoint(path)
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        """A `aesr1.serve.batching.BatchListener`."""
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.images.inc(size)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts every HTTP request with its status and latency, errors answered by other middleware
    (413 for an oversized body) included."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            self.metrics.observe_request(scope["path"], status, time.perf_counter() - start)


__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "Metrics", "MetricsMiddleware"]
