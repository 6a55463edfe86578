"""The append-only JSONL prediction cache that lets a killed evaluation resume where it stopped.

Line 1 holds the generation settings (``{"meta": {...}}``); every further line one image's prediction.
Records are appended, flushed and fsynced after each generation batch, so a kill loses at most the
batch in flight; a line torn by the kill is dropped when the cache is reopened.
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


class CacheMismatchError(ValueError):
    """The cache on disk was written with other generation settings."""


class PredictionCache:
    """Predictions on disk keyed by (dataset, id); `add` appends and syncs a batch of records."""

    def __init__(self, path: str | Path, meta: dict, overwrite: bool = False):
        self.path = Path(path)
        self.meta = meta
        self.records: dict[tuple[str, str], Prediction] = {}
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
            raise CacheMismatchError(
                f"{self.path} is not an aesr1 prediction cache (no meta line)"
            ) from error
        if stored != self.meta:
            changed = sorted(k for k in set(stored) | set(self.meta) if stored.get(k) != self.meta.get(k))
            raise CacheMismatchError(
                f"{self.path} holds predictions made with other settings ({', '.join(changed)}: "
                f"{ {k: stored.get(k) for k in changed} } vs { {k: self.meta.get(k) for k in changed} }); "
                "use another output directory or --overwrite"
            )
        for number, line in enumerate(complete[1:], start=2):
            if not line.strip():
                continue
            try:
                record = Prediction(**json.loads(line))
            except (json.JSONDecodeError, TypeError) as error:
                logger.warning("skipping unreadable line %d of %s: %s", number, self.path, error)
                continue
            self.records[record.key] = record

    def _write_lines(self, lines: Iterable[str], truncate: bool = False) -> None:
        # A full disk can leave a torn last line; reopening drops it, so a rerun recomputes that batch.
        with naming(self.path), open(self.path, "w" if truncate else "a", encoding="utf-8") as handle:
            for line in lines:
                handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: tuple[str, str]) -> Prediction | None:
        return self.records.get(key)

    def add(self, predictions: Iterable[Prediction]) -> None:
        predictions = list(predictions)
        self._write_lines(json.dumps(asdict(p), ensure_ascii=False) for p in predictions)
        for prediction in predictions:
            self.records[prediction.key] = prediction
