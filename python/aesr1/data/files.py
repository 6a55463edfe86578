"""Locating annotation files and images inside a user's dataset root, and checking images."""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

#: How `load_dataset` checks images before returning them: "open" parses each file's header with PIL
#: (catches missing, empty and non-image files cheaply), "decode" decodes every pixel (also catches
#: truncated files; slow on large datasets), "exists" only tests that a regular file exists, "none"
#: trusts the annotation.
IMAGE_CHECKS = ("open", "decode", "exists", "none")


class DatasetFileNotFoundError(FileNotFoundError):
    """An annotation file a dataset loader needs is missing; `expected` lists the paths tried."""

    def __init__(self, dataset: str, what: str, expected: Sequence[Path]):
        self.dataset = dataset
        self.expected = [str(p) for p in expected]
        tried = "\n  ".join(self.expected)
        super().__init__(f"{dataset}: {what} not found; expected it at\n  {tried}")


def find_file(dataset: str, root: Path, candidates: Sequence[str], what: str | None = None) -> Path:
    """The first existing `root / candidate`; else DatasetFileNotFoundError naming every candidate."""
    paths = [root / candidate for candidate in candidates]
    for path in paths:
        if path.is_file():
            return path
    raise DatasetFileNotFoundError(dataset, what or f"annotation file {Path(candidates[0]).name!r}", paths)


def require_root(dataset: str, root: str | os.PathLike | None) -> Path:
    if root is None:
        raise ValueError(f"{dataset}: root must be given (the dataset's folder or file)")
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"{dataset}: root must be a path, got {type(root).__name__}")
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetFileNotFoundError(dataset, "dataset root", [path])
    return path


class ImageResolver:
    """Maps an image name from an annotation file to a path under one of several candidate folders.

    Distributed datasets put images in different folders (``images/``, ``40K/``, ``1024x768/`` ...) and
    users move them; the resolver tries the given folders in order, starting with the last one that
    worked. Each folder is listed once (a set lookup per image instead of `stat` calls: AVA has 255K
    images). A name found nowhere resolves to its path under the first folder, which the image check
    then reports as missing.
    """

    def __init__(self, root: Path, folders: Iterable[str], image_dir: str | os.PathLike | None = None):
        if image_dir is not None:
            base = Path(image_dir).expanduser()
            self.folders = [str(base if base.is_absolute() else root / base)]
        else:
            self.folders = [str(root / folder) if folder else str(root) for folder in folders]
        self._listings: dict[int, frozenset[str]] = {}
        self._last = 0

    def _listing(self, index: int) -> frozenset[str]:
        if index not in self._listings:
            try:
                self._listings[index] = frozenset(os.listdir(self.folders[index]))
            except OSError:
                self._listings[index] = frozenset()
        return self._listings[index]

    def __call__(self, name: str) -> str:
        name = name.strip()
        if os.path.isabs(name):
            return name
        nested = "/" in name or os.sep in name
        order = [self._last, *(i for i in range(len(self.folders)) if i != self._last)]
        for index in order:
            found = (
                os.path.exists(os.path.join(self.folders[index], name))
                if nested
                else name in self._listing(index)
            )
            if found:
                self._last = index
                return os.path.join(self.folders[index], name)
        return os.path.join(self.folders[0], name)


def _check_one(path: str, mode: str) -> str | None:
    """None if the image passes the check, else the reason it fails."""
    try:
        kind = os.stat(path).st_mode
    except OSError:
        return "missing"
    if not stat.S_ISREG(kind):  # a FIFO would block the reader forever
        return "unreadable: not a regular file"
    if mode == "exists":
        return None
    from PIL import Image

    try:
        with Image.open(path) as image:
            if mode == "decode":
                image.load()
            elif image.size[0] <= 0 or image.size[1] <= 0:
                return "unreadable: empty image"
    except Image.DecompressionBombError as error:
        return f"unreadable: too large to decode safely: {error}"
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as error:
        return f"unreadable: {type(error).__name__}: {error}"
    return None


def check_images(paths: Sequence[str], mode: str = "open", progress: bool = True) -> list[str | None]:
    """Per path, None if usable or the reason it is not ("missing" / "unreadable: ...").

    Threads overlap the file-system latency of large datasets on network storage; PIL releases the
    GIL while reading and decoding.
    """
    if mode not in IMAGE_CHECKS:
        raise ValueError(f"check_images must be one of {IMAGE_CHECKS}, got {mode!r}")
    if mode == "none":
        return [None] * len(paths)
    workers = min(16, (os.cpu_count() or 1) * 4)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda p: _check_one(p, mode), paths, chunksize=64)
        if progress and len(paths) >= 2000:
            from tqdm.auto import tqdm

            results = tqdm(results, total=len(paths), desc="checking images", unit="img")
        return list(results)
