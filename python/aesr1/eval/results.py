"""Evaluation results: per-dataset counts and correlations, the average, JSON round trip."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from aesr1.data.registry import TABLE1_DATASETS
from aesr1.jsonio import json_safe, write_json


def _none_to_nan(value):
    return math.nan if value is None else float(value)


@dataclass
class DatasetResult:
    """One dataset's evaluation.

    Attributes:
        label: key of the dataset in the results (the dataset name unless labelled in the spec).
        name: canonical dataset name; title: its name in tables.
        images: images evaluated (after the loader skipped missing/unreadable ones).
        scored: images with at least one parseable completion (they enter the correlations).
        completions: completions generated; parse_failures: those without a parseable score.
        unscored: images none of whose completions parsed.
        skipped_at_load: images the loader skipped (missing or unreadable files).
        unreadable_at_eval: images not given to the model when generating: unreadable, not a regular
            file, or a size the image processor rejects (listed with the reason in skipped.json).
        plcc, srcc, krcc: correlations of the scored images (raw predictions).
        plcc_logistic: PLCC after the 4-parameter logistic fit; logistic_params its betas.
        note: why a metric is NaN, if one is.
    """

    label: str
    name: str
    title: str
    images: int = 0
    scored: int = 0
    completions: int = 0
    parse_failures: int = 0
    unscored: int = 0
    skipped_at_load: int = 0
    unreadable_at_eval: int = 0
    plcc: float = math.nan
    srcc: float = math.nan
    krcc: float = math.nan
    plcc_logistic: float = math.nan
    logistic_params: list[float] | None = None
    note: str = ""

    @classmethod
    def from_dict(cls, data: dict) -> DatasetResult:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("plcc", "srcc", "krcc", "plcc_logistic"):
            values[key] = _none_to_nan(values.get(key))
        return cls(**values)


def table_order(labels, names: dict[str, str] | None = None) -> list[str]:
    """Table 1's column order (TAD66K, AVA, FLICKR, PARA, AADB) first, then the rest as given."""
    names = names or {}
    rank = {name: i for i, name in enumerate(TABLE1_DATASETS)}
    labels = list(labels)
    return sorted(
        labels, key=lambda label: (rank.get(names.get(label, label), len(rank)), labels.index(label))
    )


@dataclass
class EvalResult:
    """A model's evaluation on several datasets (what `results.json` holds).

    `plcc_mode` is "raw" or "logistic": which PLCC the Table 1 layout shows (the JSON keeps both).
    """

    model: str
    datasets: dict[str, DatasetResult]
    plcc_mode: str = "raw"
    config: dict = field(default_factory=dict)
    created: str = ""

    def table_plcc(self, result: DatasetResult) -> float:
        return result.plcc_logistic if self.plcc_mode == "logistic" else result.plcc

    @property
    def average(self) -> dict[str, float]:
        """Mean PLCC (in `plcc_mode`) and SRCC over the datasets, as in Table 1's Average column;
        NaN if any dataset's metric is NaN."""
        results = list(self.datasets.values())
        if not results:
            return {"plcc": math.nan, "srcc": math.nan}
        return {
            "plcc": sum(self.table_plcc(r) for r in results) / len(results),
            "srcc": sum(r.srcc for r in results) / len(results),
        }

    def ordered(self) -> list[DatasetResult]:
        names = {label: r.name for label, r in self.datasets.items()}
        return [self.datasets[label] for label in table_order(self.datasets, names)]

    def to_dict(self) -> dict:
        return json_safe(
            {
                "model": self.model,
                "created": self.created,
                "plcc_mode": self.plcc_mode,
                "average": self.average,
                "datasets": {r.label: asdict(r) for r in self.ordered()},
                "config": self.config,
            }
        )

    @classmethod
    def from_dict(cls, data: dict) -> EvalResult:
        if not isinstance(data, dict) or "datasets" not in data or "model" not in data:
            raise ValueError("not an aesr1 evaluation result (needs 'model' and 'datasets')")
        datasets = {label: DatasetResult.from_dict(d) for label, d in data["datasets"].items()}
        return cls(
            data["model"],
            datasets,
            data.get("plcc_mode", "raw"),
            data.get("config", {}),
            data.get("created", ""),
        )

    def save_json(self, path: str | Path) -> None:
        """Strict JSON (undefined metrics as null), replacing any previous file whole."""
        write_json(path, self.to_dict())

    @classmethod
    def load_json(cls, path: str | Path) -> EvalResult:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"result file {str(path)!r} not found")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not JSON: {error}") from error
        try:
            return cls.from_dict(data)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error
