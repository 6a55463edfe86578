"""JSON files: strict JSON, whole-file replacement, JSONL read line by line, and errors that name
the file.

`json.dumps` writes NaN and infinities as the bare tokens ``NaN`` / ``Infinity``, which are not JSON
(`jq`, browsers and most other languages reject the file); here they become ``null``. A file is
written next to its destination and renamed over it, so a full disk or a kill never leaves a
truncated result behind (the previous version survives and a rerun rewrites it).

A JSONL file that cannot be read raises ValueError naming the file and the line, so a bad line is
one message, not a traceback.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float (Python or NumPy) replaced by None, tuples and NumPy arrays
    as lists and NumPy scalars as Python numbers."""
    if isinstance(value, Mapping):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # NumPy arrays and scalars
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """JSON text of `value`, non-finite numbers as null (see `json_safe`)."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise an OSError that does not say which file it concerns (a failed ``write`` on a full
    disk carries no file name) with `path` as its file name."""
    try:
        yield
    except OSError as error:
        if error.filename is None and error.errno is not None:
            raise OSError(error.errno, error.strerror, os.fspath(path)) from error
        raise


def _renamed(error: OSError, path: str | os.PathLike) -> OSError:
    """The error about a temporary file, told about the file it stands for."""
    if error.errno is None:
        return error
    return OSError(error.errno, error.strerror, os.fspath(path))


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[TextIO]:
    """A text stream whose contents replace `path` whole when the block ends without an error: it
    writes a temporary file in the same folder, syncs it and renames it over `path` (removed on
    error, so `path` keeps its previous version)."""
    path = Path(path)
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise _renamed(error, path) from error
    with naming(path):
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                yield stream
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same folder renamed over it."""
    with replacing(path) as stream:
        stream.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, value: Any, *, indent: int | None = 2, **kwargs: Any) -> Path:
    """Write `value` as strict JSON (non-finite numbers as null) to `path`, replacing it whole."""
    return write_text(path, dumps(value, indent=indent, **kwargs) + "\n")


def check_writable(folder: str | os.PathLike) -> Path:
    """Create `folder` if needed and prove a file can be created in it, so a run fails before its
    heavy work rather than when it saves; raises OSError naming the folder."""
    folder = Path(folder)
    with naming(folder):
        folder.mkdir(parents=True, exist_ok=True)
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".write-check.")
    except OSError as error:
        raise _renamed(error, folder) from error
    os.close(handle)
    os.unlink(probe)
    return folder


def os_error_message(error: OSError) -> str:
    """One line for the user: ``<path>: <cause>`` (both paths of a rename), else the error's text."""
    cause = error.strerror or str(error) or type(error).__name__
    names = [_name(n) for n in (error.filename, error.filename2) if n is not None]
    return f"{' -> '.join(names)}: {cause}" if names else cause


def _name(filename: Any) -> str:
    return os.fsdecode(filename) if isinstance(filename, (str, bytes, os.PathLike)) else str(filename)


def jsonl_objects(
    path: str | os.PathLike, *, skip_partial_last_line: bool = False
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line of a JSONL file.

    A line that is not a JSON object, or text that is not UTF-8, raises ValueError naming the file
    and the line; a file that cannot be opened raises OSError naming it. With
    `skip_partial_last_line`, a last line without its newline (a write cut short by a kill) is left
    out instead of read.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if skip_partial_last_line and not line.endswith("\n"):
                    return
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(
                        f"{str(path)!r}: line {number} is not JSON ({error.msg} at column {error.colno})"
                    ) from None
                if not isinstance(record, dict):
                    raise ValueError(
                        f"{str(path)!r}: line {number} is a JSON {type(record).__name__}, expected an object"
                    )
                yield number, record
    except UnicodeDecodeError as error:
        raise ValueError(f"{str(path)!r}: not UTF-8 text ({error.reason} at byte {error.start})") from None
