"""Request limits and access: the body size limit (checked before and while the body is read) and
the optional API key."""

from __future__ import annotations

import hmac
import os

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aesr1.serve.config import MIB
from aesr1.serve.errors import ApiError, error_response


def _size(count: int) -> str:
    return f"{count / MIB:.1f} MiB" if count >= MIB else f"{count} bytes"


class BodyLimitMiddleware:
    """Answers 413 for a request body over `max_bytes`: at once when its Content-Length says so,
    else as soon as that many bytes have arrived (chunked uploads), so that an oversized body is
    never held in memory."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self, declared: int | None = None) -> str:
        size = "" if declared is None else f" of {_size(declared)}"
        return f"request body{size} exceeds the limit of {_size(self.max_bytes)}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await error_response(400, f"Content-Length {length.decode('latin-1')!r} is not a number")(
                    scope, receive, send
                )
                return
            if declared > self.max_bytes:
                await error_response(413, self._too_large(declared))(scope, receive, send)
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise ApiError(413, self._too_large())
            return message

        await self.app(scope, limited, send)


def read_api_key(env_name: str | None) -> bytes | None:
    """The API key held by the environment variable `env_name`, None when `env_name` is None.
    Raises ValueError when the variable is unset or empty: a server asked to require a key must not
    start without one."""
    if env_name is None:
        return None
    key = os.environ.get(env_name, "")
    if not key:
        raise ValueError(f"environment variable {env_name} (the API key) is not set or empty")
    return key.encode()


def check_api_key(request: Request, expected: bytes | None) -> None:
    """Raise 401 unless the request sends `expected` as ``Authorization: Bearer KEY`` or
    ``X-API-Key: KEY``. The comparison takes the same time wherever the keys differ."""
    if expected is None:
        return
    authorization = request.headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        sent = authorization[7:].strip()
    else:
        sent = request.headers.get("x-api-key")
    challenge = {"WWW-Authenticate": "Bearer"}
    if sent is None:
        raise ApiError(
            401, "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'", challenge
        )
    # Starlette decodes header bytes as latin-1; encoding back gives the bytes the client sent.
    if not hmac.compare_digest(sent.encode("latin-1"), expected):
        raise ApiError(401, "wrong API key", challenge)


__all__ = ["BodyLimitMiddleware", "check_api_key", "read_api_key"]
