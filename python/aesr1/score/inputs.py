"""The images of a bulk scoring run, and which process scores which.

An input is an image file, a folder of images (sorted; `recursive` takes sub-folders too), a file
list (``.txt``: one path per line, blank lines and ``#`` comments skipped), a CSV file with an image
column, or a WebDataset shard (``.tar``). Relative paths in a list or a CSV are taken from the folder
of that file, so a list travels with its images. A shard's images are its regular members with an
image suffix, in archive order, named ``shard.tar:member``; they are read from the archive by offset,
so no process extracts or even reopens a shard through `tarfile` to read one image.

Every process lists all inputs the same way; `shard_range` then gives process `rank` of `world` a
contiguous block of the list. Blocks rather than a stride keep each process on its own run of
neighbouring files (whole stretches of a tar shard) and make each part file an ascending run of
indices, so merging the parts is a sequential copy.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aesr1.score import IMAGE_SUFFIXES, expand_images

#: CSV column names taken as the image column, in this order, when none is named.
IMAGE_COLUMNS = ("image", "image_path", "path", "file", "filename", "img")


class InputError(ValueError):
    """An input that cannot be listed: a CSV without an image column, an unreadable shard, nothing."""


@dataclass(frozen=True)
class Entry:
    """One image of the run.

    Attributes:
        name: how results name it: its path, or ``shard.tar:member`` for a shard's member.
        path: the file to read: the image, or the shard.
        offset, size: where a shard member's bytes lie in the shard (None for a plain file).
    """

    name: str
    path: str
    offset: int | None = None
    size: int | None = None

    def load(self):
        """What `aesr1.Scorer.score_batch` reads: the path of a plain file, or the member decoded
        (raises `aesr1.data.images.ImageError` for a member that is not a readable image)."""
        if self.offset is None:
            return self.path
        from aesr1.data.images import ImageError, decode_image

        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read(self.size)
        except OSError as error:
            raise ImageError(self.name, error.strerror or str(error)) from None
        if len(data) != self.size:
            raise ImageError(self.name, f"the shard ends {self.size - len(data)} bytes into this member")
        return decode_image(io.BytesIO(data), self.name)


def _relative_to(base: Path, value: str) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def read_list(path: Path) -> list[Entry]:
    """The image paths of a file list, one per line."""
    entries = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            value = line.strip()
            if value and not value.startswith("#"):
                name = _relative_to(path.parent, value)
                entries.append(Entry(name, name))
    return entries


def read_csv(path: Path, column: str | None = None) -> list[Entry]:
    """The image paths in the `column` of a CSV file (default: the first of `IMAGE_COLUMNS`)."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        if column is None:
            column = next((c for c in IMAGE_COLUMNS if c in header), None)
            if column is None:
                raise InputError(
                    f"{path}: no image column (columns: {', '.join(header) or 'none'}); name one "
                    f"{'/'.join(IMAGE_COLUMNS)}, or give --image-column"
                )
        elif column not in header:
            raise InputError(f"{path}: no column {column!r} (columns: {', '.join(header) or 'none'})")
        entries = []
        for row in reader:
            value = (row.get(column) or "").strip()
            if not value:
                raise InputError(f"{path}: line {reader.line_num} has no image in column {column!r}")
            name = _relative_to(path.parent, value)
            entries.append(Entry(name, name))
    return entries


def read_shard(path: Path) -> list[Entry]:
    """The image members of an uncompressed tar shard, in archive order."""
    entries = []
    try:
        with tarfile.open(path, "r:") as archive:
            for member in archive:
                if member.isfile() and os.path.splitext(member.name)[1].lower() in IMAGE_SUFFIXES:
                    entries.append(Entry(f"{path}:{member.name}", str(path), member.offset_data, member.size))
    except tarfile.TarError as error:
        raise InputError(f"{path}: not a readable uncompressed tar shard ({error})") from None
    return entries


def collect_inputs(
    sources: Sequence[str | os.PathLike], *, recursive: bool = False, image_column: str | None = None
) -> list[Entry]:
    """The images of all `sources`, in order (see the module docstring). Raises FileNotFoundError for
    a missing source, `InputError` for one that cannot be listed or when there is no image at all,
    OSError when a list cannot be read."""
    entries: list[Entry] = []
    for source in sources:
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"input {str(path)!r} not found")
        suffix = path.suffix.lower()
        try:
            if path.is_dir():
                found = [Entry(name, name) for name in expand_images(path, recursive)]
            elif suffix == ".txt":
                found = read_list(path)
            elif suffix == ".csv":
                found = read_csv(path, image_column)
            elif suffix == ".tar":
                found = read_shard(path)
            else:
                found = [Entry(str(path), str(path))]
        except UnicodeDecodeError as error:
            raise InputError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
        except csv.Error as error:
            raise InputError(f"{path}: not a readable CSV file ({error})") from None
        entries += found
    if not entries:
        raise InputError(f"no images found in {', '.join(map(str, sources))}")
    return entries


def inputs_sha256(entries: Sequence[Entry]) -> str:
    """First 16 hex digits of the SHA-256 of the image names in order: a changed input list changes
    which image an index means."""
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(entry.name.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()[:16]


def shard_range(count: int, rank: int, world: int) -> range:
    """The input indices process `rank` of `world` scores: the contiguous block
    ``[rank * count // world, (rank + 1) * count // world)``. The blocks cover ``range(count)``
    exactly once, in order, and differ in length by at most one."""
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ValueError(f"world size must be a positive integer, got {world!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world:
        raise ValueError(f"rank must lie in [0, {world}), got {rank!r}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count!r}")
    return range(rank * count // world, (rank + 1) * count // world)


@dataclass(frozen=True)
class Launch:
    """This process's place in a launch: `rank` of `world` processes, `local_rank` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Launch:
        """Read RANK, WORLD_SIZE and LOCAL_RANK as `torchrun`, `accelerate launch` and `deepspeed` set
        them (a plain `python` run is process 0 of 1). Raises ValueError for malformed values."""
        env = os.environ if env is None else env
        values = {}
        for key, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", None)):
            text = env.get(key)
            if text is None or text == "":
                values[key] = default
                continue
            try:
                values[key] = int(text)
            except ValueError:
                raise ValueError(f"environment variable {key}={text!r} is not an integer") from None
        rank, world = values["RANK"], values["WORLD_SIZE"]
        try:
            shard_range(0, rank, world)
        except ValueError as error:
            raise ValueError(f"RANK={rank}, WORLD_SIZE={world}: {error}") from None
        local = rank if values["LOCAL_RANK"] is None else values["LOCAL_RANK"]
        if local < 0:
            raise ValueError(f"environment variable LOCAL_RANK={local} is negative")
        return cls(rank, world, local)


__all__ = [
    "IMAGE_COLUMNS", "Entry", "InputError", "Launch", "collect_inputs", "inputs_sha256", "read_csv",
    "read_list", "read_shard", "shard_range",
]  # fmt: skip
