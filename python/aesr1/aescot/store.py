"""Append-as-you-go JSONL files and the resume state read back from them.

A build writes three files next to ``out.jsonl``:

- ``out.jsonl``: kept items, the SFT-ready records (interface 2);
- ``out.rejects.jsonl``: one line per dropped item (``final: true``) or failed attempt
  (``final: false``: expert/judge error, retried on the next run), with the critique for audits;
- ``out.report.json`` (and ``out.meta.json``, the settings of the first run).

Each finished item is one ``write`` of one complete line followed by a flush, to exactly one of the
two JSONL files, so a kill loses at most the items in flight. A kill in the middle of a write leaves
a partial last line, which the next run cuts off before appending.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aesr1.jsonio import jsonl_objects

# The kept-items file that `build --output-dir DIR` writes, and that training finds in DIR.
OUTPUT_FILE_NAME = "aescot.jsonl"


@dataclass(frozen=True)
class OutputPaths:
    out: Path
    rejects: Path
    report: Path
    meta: Path
    lock: Path

    @classmethod
    def for_output(cls, out: str | Path) -> OutputPaths:
        out = Path(out)
        stem = out.name[: -len(out.suffix)] if out.suffix else out.name
        return cls(
            out=out,
            rejects=out.with_name(f"{stem}.rejects.jsonl"),
            report=out.with_name(f"{stem}.report.json"),
            meta=out.with_name(f"{stem}.meta.json"),
            lock=out.with_name(f"{stem}.lock"),
        )

    def existing(self) -> list[Path]:
        return [p for p in (self.out, self.rejects, self.report, self.meta) if p.exists()]


class OutputLock:
    """An advisory exclusive lock (``flock``) on ``<stem>.lock``, held for a whole build.

    Two processes appending to one output would duplicate items; the lock makes the second fail at
    once. The kernel drops the lock when its holder dies, so a killed run never blocks the rerun.
    On platforms without ``fcntl`` (Windows) it does nothing.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle = None

    def __enter__(self) -> OutputLock:
        try:
            import fcntl
        except ImportError:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held until __exit__
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.close()
            raise RuntimeError(
                f"another AesCoT build holds {self.path}; wait for it or write to another --output-dir"
            ) from error
        self._handle = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            import fcntl

            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def repair_jsonl(path: Path) -> int:
    """Cut a partial trailing line (left by a kill mid-write); returns the number of bytes removed."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return 0
        # Scan back for the last newline in blocks; the partial line is usually short.
        position, block = size, 4096
        while position > 0:
            start = max(0, position - block)
            handle.seek(start)
            chunk = handle.read(position - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            position = start
        else:
            keep = 0
        handle.truncate(keep)
        return size - keep


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All records of `path` (none if it does not exist) but a partial last line, which a killed run
    leaves and `repair_jsonl` removes; a corrupt complete line raises ValueError naming the line."""
    if not path.exists():
        return []
    records = []
    for number, record in jsonl_objects(path, skip_partial_last_line=True):
        if "id" not in record:
            raise ValueError(f"{str(path)!r}: line {number} is not an AesCoT record (an object with an 'id')")
        records.append(record)
    return records


class JsonlAppender:
    """Appends one JSON object per line, flushing after each, to a file repaired on open."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle = None

    def __enter__(self) -> JsonlAppender:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_jsonl(self.path)
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        return self

    def append(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None


@dataclass
class ResumeState:
    """What earlier runs finished: kept records, final drops, and the last error of unfinished items."""

    kept: dict[str, dict[str, Any]] = field(default_factory=dict)
    dropped: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, paths: OutputPaths) -> ResumeState:
        state = cls()
        for record in read_jsonl(paths.out):
            state.kept.setdefault(record["id"], record)
        for record in read_jsonl(paths.rejects):
            item_id = record["id"]
            if item_id in state.kept:
                continue
            if record.get("final", True):
                state.dropped[item_id] = record
                state.errors.pop(item_id, None)
            elif item_id not in state.dropped:
                state.errors[item_id] = record
        return state

    def finished(self, retry_failed: bool) -> set[str]:
        """Ids not to process again."""
        done = set(self.kept) | set(self.dropped)
        return done if retry_failed else done | set(self.errors)
