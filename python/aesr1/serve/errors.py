"""Error answers: every failure is a JSON object ``{"error": "..."}`` that names the problem, with the
HTTP status that fits it (4xx for the request's fault, 5xx for the server's)."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException


class ApiError(Exception):
    """An error answer: `status`, a `message` for the client, and extra `headers` (Retry-After,
    WWW-Authenticate)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=dict(headers or {}))


async def _api_error(request: Request, error: ApiError) -> JSONResponse:
    return error_response(error.status, error.message, error.headers)


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    # Routing errors (404, 405) and the multipart parser's own limits arrive here.
    return error_response(error.status_code, str(error.detail), getattr(error, "headers", None))


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    problems = "; ".join(
        f"{'.'.join(str(part) for part in item.get('loc', ()))}: {item.get('msg', '')}"
        for item in error.errors()
    )
    return error_response(422, problems or "invalid request")


def install_error_handlers(app: FastAPI) -> None:
    """Answer `ApiError`s, HTTP errors and validation errors as ``{"error": ...}``."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)


__all__ = ["ApiError", "error_response", "install_error_handlers"]
