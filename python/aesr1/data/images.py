"""Images as a vision-language model receives them: 8-bit RGB, from regular files, at sizes the
Qwen2-VL image processor accepts; anything else is an `ImageError` naming the image and the cause, so
that one bad file is reported for that file while a run goes on with the others."""

from __future__ import annotations

import os
import stat
import struct
from typing import Any, BinaryIO

#: What PIL raises for a file it cannot read: unidentified or truncated data (OSError), corrupt
#: headers and chunks (ValueError, SyntaxError, EOFError, struct.error).
_DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, SyntaxError, EOFError, struct.error)

#: Modes with more than 8 bits per sample, which ``convert("RGB")`` clips instead of rescaling.
_HIGH_DEPTH_MODES = ("I", "F")


class ImageError(ValueError):
    """An image that cannot be given to the model; `image` names it, `reason` says why."""

    def __init__(self, image: str, reason: str):
        self.image, self.reason = image, reason
        super().__init__(f"{image}: {reason}")


def _to_8bit(image):
    """A greyscale "L" image of a 16-bit, 32-bit integer or float image, scaled rather than clipped.

    PIL's integer modes carry no bit depth of their own: "I;16*" holds 16-bit samples and PIL reads
    16-bit files as "I" too, so "I" is read on the 16-bit scale unless no sample exceeds 255 (then it
    holds 8-bit values). Float images follow the usual conventions: [0, 1] when no sample exceeds 1,
    else the 8-bit scale, else the 16-bit one.
    """
    import numpy as np
    from PIL import Image

    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(values.max()) if values.size else 0.0
    if image.mode.startswith("I;16"):
        scale = 255.0 / 65535.0
    elif image.mode == "F" and peak <= 1.0:
        scale = 255.0
    elif peak <= 255.0:
        scale = 1.0
    else:
        scale = 255.0 / 65535.0
    levels = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(levels, mode="L")


def to_rgb(image):
    """`image` as 8-bit RGB; high-bit-depth greyscale ("I;16", "I", "F") is rescaled to 8 bits."""
    if image.mode.startswith("I;16") or image.mode in _HIGH_DEPTH_MODES:
        image = _to_8bit(image)
    return image.convert("RGB")


def size_problem(image) -> str | None:
    """Why the Qwen2-VL image processor would reject `image`'s size, or None.

    The processor's own rule (`smart_resize`) decides: it raises for an aspect ratio over 200 and
    divides by zero for an empty image, failing the whole batch the image is in.
    """
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    width, height = image.size
    if width < 1 or height < 1:
        return f"empty image ({width}x{height} pixels)"
    try:
        smart_resize(height, width)
    except (ValueError, ZeroDivisionError) as error:
        return f"the model's image processor rejects its size {width}x{height}: {error}"
    return None


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def open_image(path: str | os.PathLike):
    """The image file at `path` as 8-bit RGB with its path in ``info["path"]``.

    Only regular files are read (opening a FIFO blocks until someone writes to it); PIL's
    decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`) applies. Raises `ImageError`.
    """
    name = os.fspath(path)
    try:
        mode = os.stat(name).st_mode
    except OSError as error:
        raise ImageError(name, error.strerror or str(error)) from None
    if not stat.S_ISREG(mode):
        raise ImageError(name, f"not a regular file ({_file_kind(mode)})")
    return decode_image(name, name)


def decode_image(source: str | os.PathLike | BinaryIO, name: str):
    """The image in `source` (a path or a binary stream, e.g. a tar member's bytes) as 8-bit RGB with
    `name` in ``info["path"]``; PIL's decompression-bomb limit applies. Raises `ImageError`."""
    from PIL import Image

    try:
        with Image.open(source) as image:
            rgb = to_rgb(image)
    except Image.DecompressionBombError as error:
        raise ImageError(name, f"too large to decode safely: {error}") from None
    except _DECODE_ERRORS as error:
        raise ImageError(name, f"{type(error).__name__}: {error}") from None
    rgb.info["path"] = name
    return rgb


def model_image(entry: Any, name: str | None = None):
    """A path or a PIL image as the 8-bit RGB image a model receives; raises `ImageError` for an
    unreadable file or a size the image processor rejects. `name` names an in-memory image."""
    from PIL import Image

    if isinstance(entry, Image.Image):
        name = name or "<PIL image>"
        try:
            image = to_rgb(entry)
        except _DECODE_ERRORS as error:  # a lazily loaded image whose file is truncated
            raise ImageError(name, f"{type(error).__name__}: {error}") from None
    else:
        name = os.fspath(entry)
        image = open_image(entry)
    problem = size_problem(image)
    if problem is not None:
        raise ImageError(name, problem)
    return image
