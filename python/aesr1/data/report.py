"""What a dataset load kept and skipped: `LoadedDataset` is the list of records plus its `LoadReport`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aesr1.data.records import ScoredImage


@dataclass
class LoadReport:
    """Counts and lists of one `load_dataset` call.

    Attributes:
        dataset: canonical dataset name.
        split: the split loaded ("train", "val", "test" or "all").
        root: the dataset root given.
        annotated: annotation rows read (all splits).
        in_split: rows that belong to `split`.
        loaded: records returned (in_split minus skipped).
        split_rule: "official" or "seeded 9:1 (seed=...)".
        missing: image paths that do not exist.
        unreadable: (image path, reason) of files that exist but are not readable images.
        invalid_rows: (where, reason) of annotation rows left out (e.g. an AVA row without votes).
    """

    dataset: str
    split: str
    root: str
    annotated: int = 0
    in_split: int = 0
    loaded: int = 0
    split_rule: str = "official"
    missing: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    invalid_rows: list[tuple[str, str]] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        """Images left out of this split because they are missing or unreadable."""
        return len(self.missing) + len(self.unreadable)

    def summary(self) -> str:
        text = (
            f"{self.dataset} [{self.split}, {self.split_rule}]: {self.loaded} of {self.in_split} images "
            f"loaded ({len(self.missing)} missing, {len(self.unreadable)} unreadable)"
        )
        if self.invalid_rows:
            text += f"; {len(self.invalid_rows)} annotation rows left out"
        return text

    def to_dict(self) -> dict:
        data = asdict(self)
        data["skipped"] = self.skipped
        return data

    def write(self, path: str | Path) -> None:
        """Saves the report (with every skipped path) as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


class LoadedDataset(list[ScoredImage]):
    """The records of a loaded split (a plain list) with the `report` of what was skipped."""

    def __init__(self, items=(), report: LoadReport | None = None):
        super().__init__(items)
        self.report = report
