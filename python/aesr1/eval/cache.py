"""The append-only JSONL prediction cache that lets a killed evaluation resume where it stopped.

Line 1 holds the generation settings (``{"meta": {...}}``); every further line one image's prediction.
Records are appended, flushed and fsynced after each generation batch, so a kill loses at most the
batch in flight; a line torn by the kill is dropped when the cache is reopened. `AppendLog` is that
file format for any kind of record (`aesr1.score.bulk` keeps its part files with it).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from aesr1.eval.aggregate import mean_scores
from aesr1.jsonio import naming

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    """One image's evaluation record.

    Attributes:
        dataset: dataset label (key in the results).
        id: image id within the dataset.
        image: image path.
        gt: ground-truth score on [0, 1].
        completions: the generated completions.
        scores: parsed score of each completion (None where unparseable).
        pred: the score mode's prediction on [0, 1] (the greedy answer, the mean of the parseable
            samples, or the expected answer), None when there is none.
        std: its uncertainty (std of the samples or of the expected mode's answer distribution),
            None for greedy.
    """

    dataset: str
    id: str
    image: str
    gt: float
    completions: list[str]
    scores: list[float | None]
    pred: float | None
    std: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.dataset, self.id

    @property
    def parse_failures(self) -> int:
        return sum(score is None for score in self.scores)

    @classmethod
    def from_scores(cls, dataset, id, image, gt, completions, scores) -> Prediction:
        """Builds the record from float scores (NaN = unparseable); pred is the mean of the valid ones."""
        clean = [None if score is None or math.isnan(score) else float(score) for score in scores]
        mean = float(mean_scores(np.array([clean], dtype=np.float64))[0])
        pred = None if math.isnan(mean) else mean
        return cls(dataset, id, image, float(gt), list(completions), clean, pred)


class LogMismatchError(ValueError):
    """An append-only log on disk was written with other settings than the run that opens it."""


#: The name the evaluation's error has always had.
CacheMismatchError = LogMismatchError


def check_meta(path: str | Path, stored: dict, meta: dict, contents: str, remedy: str) -> None:
    """Raise `LogMismatchError` naming each setting that differs between `stored` and `meta`."""
    if stored == meta:
        return
    changed = sorted(k for k in set(stored) | set(meta) if stored.get(k) != meta.get(k))
    raise LogMismatchError(
        f"{path} holds {contents} made with other settings ({', '.join(changed)}: "
        f"{ {k: stored.get(k) for k in changed} } vs { {k: meta.get(k) for k in changed} }); {remedy}"
    )


class AppendLog:
    """An append-only JSONL file of records made with the settings in its first line.

    Opening it creates the file with ``{"meta": meta}`` as line 1, or reads it back: a torn last line
    (no newline: the writer was killed mid-write) is cut off, settings other than `meta` raise
    `LogMismatchError`, and every complete record line is handed to `_take`. `append` writes records,
    flushes and fsyncs, so a kill loses at most the batch in flight.

    Subclasses name what they hold: `contents` and `kind` for messages, `remedy` for the mismatch
    error's advice.
    """

    contents = "records"
    kind = "aesr1 log"
    remedy = "use another file"

    def __init__(self, path: str | Path, meta: dict, overwrite: bool = False):
        self.path = Path(path)
        self.meta = meta
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if overwrite and self.path.exists():
            self.path.unlink()
        if self.path.exists() and self.path.stat().st_size > 0:
            self._load()
        else:
            self._write_lines([json.dumps({"meta": meta})], truncate=True)

    def _load(self) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        complete, tail = lines[:-1], lines[-1]
        if tail.strip():
            # The last line has no newline: the run was killed while writing it.
            logger.warning("dropping a torn last line of %s (the run was interrupted mid-write)", self.path)
            with naming(self.path), open(self.path, "r+b") as handle:
                handle.truncate(len(raw) - len(tail))
        if not complete:
            self._write_lines([json.dumps({"meta": self.meta})], truncate=True)
            return
        try:
            stored = json.loads(complete[0])["meta"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise LogMismatchError(f"{self.path} is not an {self.kind} (no meta line)") from error
        check_meta(self.path, stored, self.meta, self.contents, self.remedy)
        for number, line in enumerate(complete[1:], start=2):
            if not line.strip():
                continue
            try:
                self._take(json.loads(line))
            except (json.JSONDecodeError, TypeError, KeyError, ValueError) as error:
                logger.warning("skipping unreadable line %d of %s: %s", number, self.path, error)

    def _take(self, record: dict) -> None:
        """Keep one record read back from the file; raise TypeError/KeyError/ValueError to skip it."""

    def _write_lines(self, lines: Iterable[str], truncate: bool = False) -> None:
        # A full disk can leave a torn last line; reopening drops it, so a rerun recomputes that batch.
        with naming(self.path), open(self.path, "w" if truncate else "a", encoding="utf-8") as handle:
            for line in lines:
                handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def append(self, records: Iterable[dict]) -> None:
        """Append `records` (JSON objects, non-ASCII kept) and sync them to disk."""
        self._write_lines(json.dumps(record, ensure_ascii=False) for record in records)


class PredictionCache(AppendLog):
    """Predictions on disk keyed by (dataset, id); `add` appends and syncs a batch of records."""

    contents = "predictions"
    kind = "aesr1 prediction cache"
    remedy = "use another output directory or --overwrite"

    def __init__(self, path: str | Path, meta: dict, overwrite: bool = False):
        self.records: dict[tuple[str, str], Prediction] = {}
        super().__init__(path, meta, overwrite)

    def _take(self, record: dict) -> None:
        prediction = Prediction(**record)
        self.records[prediction.key] = prediction

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: tuple[str, str]) -> Prediction | None:
        return self.records.get(key)

    def add(self, predictions: Iterable[Prediction]) -> None:
        predictions = list(predictions)
        self.append(asdict(p) for p in predictions)
        for prediction in predictions:
            self.records[prediction.key] = prediction
