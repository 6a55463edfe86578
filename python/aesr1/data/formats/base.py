"""The contract between a format reader and `load_dataset`."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aesr1.data.normalization import ScoreRange


@dataclass
class Annotation:
    """One annotated image as read from the files, score already normalised to [0, 1].

    `split` is the official split the row belongs to ("train" / "val" / "test"), or None where the
    dataset has no official split (then `load_dataset` applies the seeded 9:1 split).
    """

    id: str
    image: str
    score: float
    std: float | None = None
    split: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReadResult:
    annotations: list[Annotation]
    invalid_rows: list[tuple[str, str]] = field(default_factory=list)


#: A reader gets (root, split, options) and returns the annotations needed for that split; it reads
#: only the files that split needs, so a user holding just the test files can evaluate.
Reader = Callable[[Path, str, dict[str, Any]], ReadResult]


@dataclass(frozen=True)
class DatasetFormat:
    """A supported dataset: how to read it and what it documents.

    Attributes:
        name: canonical name (used in `--data` specs and result tables).
        title: display name in tables (Table 1 uses TAD66K, AVA, FLICKR, PARA, AADB).
        reader: the format reader.
        score_range: the documented raw score range, None where the user must state it.
        official_splits: the official splits, empty where the seeded 9:1 split applies.
        options: reader-specific options (besides the common ones of `load_dataset`) with their docs.
        aliases: other accepted names.
        folder_names: folder names that hold the dataset under a common `--root`.
        marker: a file (relative to the dataset folder) whose presence identifies the folder.
        root_is_file: the root is the annotation file itself (CSV/JSONL/JSON formats).
    """

    name: str
    title: str
    reader: Reader
    score_range: ScoreRange | None
    official_splits: tuple[str, ...] = ()
    options: Mapping[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    folder_names: tuple[str, ...] = ()
    marker: str | None = None
    root_is_file: bool = False


def read_csv_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV with a header; header names and values are whitespace-stripped
    (several distributed files pad fields with spaces)."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, skipinitialspace=True)
        header = next(reader, None)
        if header is None:
            return
        header = [name.strip() for name in header]
        for row in reader:
            if not row or all(not value.strip() for value in row):
                continue
            # Short rows leave trailing columns out; `require_columns` and the readers catch that.
            yield reader.line_num, dict(zip(header, (value.strip() for value in row), strict=False))


def csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return [name.strip() for name in next(csv.reader(handle, skipinitialspace=True), [])]


def require_columns(dataset: str, path: Path, columns: list[str], needed: tuple[str, ...]) -> None:
    missing = [name for name in needed if name not in columns]
    if missing:
        raise ValueError(f"{dataset}: {path} lacks column(s) {missing}; its header is {columns}")


def parse_float(value: Any, where: str, what: str = "score") -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} {value!r} at {where} is not a number") from error


def optional_float(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
