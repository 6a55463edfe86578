"""Saves that a kill cannot leave half-written.

Everything the pipeline relies on when it resumes (checkpoints, final models, `results.json`,
`table.md`, the cold-start file) is written under a temporary sibling name, flushed to disk, then
renamed into place: a reader sees the old state or the whole new one, never a torn file. A
directory additionally carries a `COMPLETE` marker, written last, so a directory left by an older
version or copied by hand is not mistaken for a finished save.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

MARKER = "COMPLETE"


def staging_path(path: str | Path) -> Path:
    """The temporary sibling a save of `path` is written to (hidden, so listings of
    `checkpoint-*` never see it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def is_complete(directory: str | Path) -> bool:
    return (Path(directory) / MARKER).is_file()


def _fsync(path: Path) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # a directory cannot be opened on some platforms; its entries are then not syncable
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    for root, _, files in os.walk(directory):
        for name in files:
            _fsync(Path(root) / name)
        _fsync(Path(root))


def atomic_write_text(path: str | Path, text: str) -> None:
    """`aesr1.jsonio.write_text` (temporary sibling, fsync, rename; OS errors name `path`), then
    the folder's entry is synced too."""
    from aesr1.jsonio import write_text

    write_text(path, text)
    _fsync(Path(path).parent)


def publish_file(staged: Path, path: str | Path) -> None:
    """Move a fully written file into place."""
    _fsync(staged)
    os.replace(staged, path)
    _fsync(Path(path).parent)


def remove_tree(path: str | Path) -> None:
    """Delete a directory so that no partly deleted copy keeps its old name (a complete-looking
    checkpoint with files missing): rename it away first."""
    path = Path(path)
    if not path.exists():
        return
    trash = path.with_name(f".{path.name}.trash")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    _fsync(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def publish_dir(staged: Path, path: str | Path) -> None:
    """Mark the fully written `staged` directory complete and rename it to `path` (replacing an
    incomplete leftover of that name)."""
    path = Path(path)
    fsync_tree(staged)
    atomic_write_text(staged / MARKER, "")
    if path.exists():
        remove_tree(path)
    os.replace(staged, path)
    _fsync(path.parent)


def clear_leftovers(directory: str | Path) -> None:
    """Remove the temporary siblings a killed save left in `directory`."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.name.startswith(".") and entry.name.endswith((".partial", ".trash")):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
