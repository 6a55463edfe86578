"""Images from requests: multipart uploads, base64 in JSON, or paths under an allowed folder.

A request is read and its images decoded before it queues, so that a bad image is answered at once
(4xx naming it) and the model's worker only ever sees RGB images the model accepts
(`aesr1.data.images.model_image`, the check the Scorer itself applies).

JSON forms::

    {"images": ["<base64>", {"data": "<base64>", "name": "a.jpg"}, {"path": "sub/b.png"}]}
    {"a": "<base64>", "b": {"path": "b.png"}}                  # /v1/compare

Multipart forms: file fields ``image`` (repeatable; ``images`` is the same) for `/v1/score`, ``a``
and ``b`` for `/v1/compare`; the file name names the image.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import stat
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from aesr1.data.images import _DECODE_ERRORS, ImageError, model_image
from aesr1.serve.config import MIB, ServeConfig
from aesr1.serve.errors import ApiError

SCORE_FIELDS = ("image", "images")
COMPARE_FIELDS = ("a", "b")
_ENTRY_KEYS = ("data", "name", "path")


def _size(count: int) -> str:
    return f"{count / MIB:.1f} MiB" if count >= MIB else f"{count} bytes"


@dataclass
class RequestImage:
    """One image of a request before decoding: `label` says where it is in the request (for error
    messages), `name` is the result's image name; `data` (encoded bytes) or `path` holds it."""

    label: str
    name: str
    data: bytes | None = None
    path: str | None = None

    def where(self) -> str:
        return self.label if self.name == self.label else f"{self.label} ({self.name!r})"


def _content_kind(request: Request) -> str:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        return "multipart"
    if kind == "application/json" or kind.endswith("+json"):
        return "json"
    raise ApiError(
        415,
        f"unsupported content type {kind or '(none)'!r}: send multipart/form-data with image files, "
        "or application/json with base64 images",
    )


async def _json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(400, f"the body is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ApiError(422, f"the JSON body must be an object, got {type(value).__name__}")
    return value


def _check_keys(where: str, value: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ApiError(
            422, f"{where}: unknown field(s) {', '.join(map(repr, unknown))} (allowed: {', '.join(allowed)})"
        )


def _json_entry(label: str, default_name: str, value: Any, config: ServeConfig) -> RequestImage:
    if isinstance(value, str):
        value = {"data": value}
    if not isinstance(value, dict):
        raise ApiError(
            422,
            f"{label} must be a base64 string or an object with 'data' or 'path', got {type(value).__name__}",
        )
    _check_keys(label, value, _ENTRY_KEYS)
    name = value.get("name")
    if name is not None and not isinstance(name, str):
        raise ApiError(422, f"{label}.name must be a string, got {type(name).__name__}")
    if ("data" in value) == ("path" in value):
        raise ApiError(422, f"{label} needs exactly one of 'data' (base64) and 'path'")
    if "path" in value:
        path = value["path"]
        if not isinstance(path, str) or not path:
            raise ApiError(422, f"{label}.path must be a non-empty string")
        return RequestImage(label, name or path, path=path)
    data = value["data"]
    if not isinstance(data, str):
        raise ApiError(422, f"{label}.data must be a base64 string, got {type(data).__name__}")
    entry = RequestImage(label, name or default_name)
    if data.startswith("data:") and "," in data:  # a data URL, as browsers write them
        data = data.partition(",")[2]
    # Four base64 characters hold three bytes: refuse an oversized image before decoding it.
    if len(data) // 4 * 3 > config.max_image_bytes + 3:
        raise ApiError(
            413, f"{entry.where()}: about {_size(len(data) // 4 * 3)}, over the image limit of "
            f"{_size(config.max_image_bytes)}",
        )  # fmt: skip
    try:
        # Line breaks are allowed: `base64` without -w0 wraps its output.
        entry.data = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        raise ApiError(422, f"{entry.where()}: not valid base64 ({error})") from None
    if len(entry.data) > config.max_image_bytes:
        raise ApiError(
            413,
            f"{entry.where()}: {_size(len(entry.data))}, over the image limit of {_size(config.max_image_bytes)}",
        )
    return entry


async def _form_entries(
    request: Request, fields: tuple[str, ...], config: ServeConfig
) -> list[tuple[str, RequestImage]]:
    """(field, entry) for each uploaded file, in the order sent."""
    limit = config.max_images_per_request
    try:
        # One over the limit: the count check of the caller names it.
        form = await request.form(max_files=limit + 1, max_fields=limit + 1)
    except HTTPException as error:
        if error.status_code == 400 and str(error.detail).startswith("Too many"):
            raise ApiError(413, f"more than {limit} images in one request ({error.detail})") from None
        raise
    try:
        entries = []
        for field, value in form.multi_items():
            if field not in fields:
                raise ApiError(
                    422,
                    f"unknown form field {field!r} (expected file field(s) {', '.join(map(repr, fields))})",
                )
            label = f"{field}[{sum(f == field for f, _ in entries)}]" if field in SCORE_FIELDS else field
            if not isinstance(value, UploadFile):
                raise ApiError(422, f"form field {label} must be a file upload, got text")
            # Read at most one byte past the limit: an oversized upload is refused without copying it.
            data = await value.read(config.max_image_bytes + 1)
            entry = RequestImage(label, value.filename or label, data=data)
            if len(data) > config.max_image_bytes:
                raise ApiError(
                    413, f"{entry.where()}: over the image limit of {_size(config.max_image_bytes)}"
                )
            entries.append((field, entry))
    finally:
        await form.close()  # uploads spooled to temporary files
    return entries


def _count(count: int, config: ServeConfig) -> None:
    if count == 0:
        raise ApiError(422, "no images in the request")
    if count > config.max_images_per_request:
        raise ApiError(413, f"{count} images in one request; the limit is {config.max_images_per_request}")


async def score_entries(request: Request, config: ServeConfig) -> list[RequestImage]:
    """The images of a `/v1/score` request, undecoded."""
    if _content_kind(request) == "multipart":
        entries = [entry for _, entry in await _form_entries(request, SCORE_FIELDS, config)]
        if not entries:
            raise ApiError(422, "no images in the request: send file field(s) 'image'")
        _count(len(entries), config)
        return entries
    body = await _json_body(request)
    _check_keys("the JSON body", body, ("images",))
    images = body.get("images")
    if not isinstance(images, list):
        raise ApiError(422, "the JSON body needs 'images': a list of base64 strings or objects")
    _count(len(images), config)
    return [_json_entry(f"images[{i}]", f"image {i}", value, config) for i, value in enumerate(images)]


async def compare_entries(request: Request, config: ServeConfig) -> tuple[RequestImage, RequestImage]:
    """Images `a` and `b` of a `/v1/compare` request, undecoded."""
    if _content_kind(request) == "multipart":
        found: dict[str, RequestImage] = {}
        for field, entry in await _form_entries(request, COMPARE_FIELDS, config):
            if field in found:
                raise ApiError(422, f"form field {field!r} given twice: compare takes one image a and one b")
            found[field] = entry
    else:
        body = await _json_body(request)
        _check_keys("the JSON body", body, COMPARE_FIELDS)
        found = {
            field: _json_entry(field, field, body[field], config) for field in COMPARE_FIELDS if field in body
        }
    missing = [field for field in COMPARE_FIELDS if field not in found]
    if missing:
        raise ApiError(
            422, f"missing image(s) {' and '.join(map(repr, missing))}: compare takes images a and b"
        )
    return found["a"], found["b"]


def _resolve(entry: RequestImage, root: str | None) -> str:
    """The real path of a path entry, refused (403) outside `root` or when paths are off."""
    if root is None:
        raise ApiError(
            403,
            f"{entry.where()}: this server reads no paths (start it with --allow-paths DIR); upload the image",
        )
    candidate = entry.path if os.path.isabs(entry.path) else os.path.join(root, entry.path)
    real = os.path.realpath(candidate)
    if os.path.commonpath([real, root]) != root:
        raise ApiError(403, f"{entry.where()}: outside the folder this server reads images from")
    return real


def _read_path(entry: RequestImage, config: ServeConfig, root: str | None) -> bytes:
    """The bytes of a path entry's file: a regular file inside `root`, within the image limit."""
    real = _resolve(entry, root)
    try:
        info = os.stat(real)
    except FileNotFoundError:
        raise ApiError(422, f"{entry.where()}: no such file") from None
    # Opening a FIFO would block until someone writes to it.
    if not stat.S_ISREG(info.st_mode):
        raise ApiError(422, f"{entry.where()}: unreadable image: not a regular file")
    if info.st_size > config.max_image_bytes:
        raise ApiError(413, f"{entry.where()}: {_size(info.st_size)}, over the image limit of "
                       f"{_size(config.max_image_bytes)}")  # fmt: skip
    try:
        with open(real, "rb") as file:
            return file.read(config.max_image_bytes + 1)
    except OSError as error:
        raise ApiError(422, f"{entry.where()}: unreadable image: {error.strerror or error}") from None


def _decode(entry: RequestImage, config: ServeConfig, root: str | None):
    """The RGB image of an entry, as `model_image` gives it to the model; `ApiError` otherwise."""
    from PIL import Image

    data = entry.data if entry.path is None else _read_path(entry, config, root)
    try:
        with Image.open(io.BytesIO(data)) as image:
            # PIL only warns between its limit and twice it; a small file can decode to gigabytes.
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and image.size[0] * image.size[1] > limit:
                width, height = image.size
                raise ApiError(
                    413, f"{entry.where()}: {width}x{height} pixels, over the limit of {limit} pixels"
                )
            return model_image(image, entry.name)
    except ImageError as error:
        raise ApiError(422, f"{entry.where()}: unreadable image: {error.reason}") from None
    except Image.DecompressionBombError as error:
        raise ApiError(413, f"{entry.where()}: too large to decode safely: {error}") from None
    except _DECODE_ERRORS as error:  # Image.open: not an image file at all
        raise ApiError(422, f"{entry.where()}: unreadable image: {type(error).__name__}: {error}") from None


async def decode(entries: list[RequestImage], config: ServeConfig) -> list[Any]:
    """The RGB images of `entries`, decoded in a worker thread (the event loop keeps serving);
    raises `ApiError` for the first one that cannot be scored."""
    root = None if config.allow_paths is None else os.path.realpath(config.allow_paths)
    return await run_in_threadpool(lambda: [_decode(entry, config, root) for entry in entries])


__all__ = ["COMPARE_FIELDS", "SCORE_FIELDS", "RequestImage", "compare_entries", "decode", "score_entries"]
