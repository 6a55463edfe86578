"""`ServeConfig`: the scoring service's settings (batching, limits, access), checked on creation."""

from __future__ import annotations

import math
from dataclasses import dataclass

MIB = 2**20


@dataclass(frozen=True)
class ServeConfig:
    """Settings of `aesr1.serve.create_app` and `python -m aesr1.serve`.

    Attributes:
        host, port: where the command listens (default 127.0.0.1:8000: only this machine).
        max_batch_size: images gathered into one model call (default 8).
        max_wait_ms: how long the first queued request of a batch waits for others to join it before
            the batch runs anyway (default 10 ms: a few ms of latency for much larger batches under
            load).
        max_queue: images that may wait for the model; a request that would exceed it is answered
            429 with Retry-After (default 64).
        max_images_per_request: images in one `/v1/score` request (default 16).
        max_body_bytes: request body size limit, base64 and multipart overhead included (default
            32 MiB).
        max_image_bytes: encoded size limit of one image (default 10 MiB).
        timeout_s: seconds a request may wait for its scores, queueing included, before it is
            answered 504 (default 60).
        allow_paths: a folder whose images requests may name by path (`{"path": ...}`); None (the
            default) accepts no paths. Paths that resolve outside it, through ``..`` or symbolic
            links, are refused.
        api_key_env: the name of an environment variable holding the API key that `/v1/*` requests
            must send (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``); None: no key.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64
    max_images_per_request: int = 16
    max_body_bytes: int = 32 * MIB
    max_image_bytes: int = 10 * MIB
    timeout_s: float = 60.0
    allow_paths: str | None = None
    api_key_env: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue", "max_images_per_request", "max_body_bytes",
                     "max_image_bytes"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port must be an integer in 0-65535, got {self.port!r}")
        for name, strict in (("max_wait_ms", False), ("timeout_s", True)):
            value = getattr(self, name)
            finite = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            if not finite or value < 0 or (strict and value == 0):
                bound = "> 0" if strict else ">= 0"
                raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
        if self.max_images_per_request > self.max_queue:
            raise ValueError(
                f"max_images_per_request ({self.max_images_per_request}) exceeds max_queue "
                f"({self.max_queue}): such a request could never be queued"
            )
        if self.api_key_env is not None and not self.api_key_env:
            raise ValueError("api_key_env must name an environment variable (or be None for no key)")


__all__ = ["MIB", "ServeConfig"]
