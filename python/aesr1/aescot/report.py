"""The final report of a build: kept and dropped items per bin and per reason, over all runs so far."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aesr1.aescot.filters import DROP_REASONS, ERROR_REASONS


@dataclass
class BinReport:
    """One score bin. `available` counts the input items of the bin, `untried` those never sent."""

    target: int
    available: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    untried: int = 0

    @property
    def shortfall(self) -> int:
        return max(0, self.target - self.kept)


@dataclass
class BuildReport:
    """Cumulative result of `build_dataset` on one output file (earlier resumed runs included).

    `this_run` holds the counters of the latest run only (items processed, elapsed seconds, and the
    endpoint statistics: requests, retries, timeouts, statuses).
    """

    out: str
    expert: str
    judge: str | None
    bins: dict[str, BinReport]
    this_run: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return sum(b.kept for b in self.bins.values())

    @property
    def dropped(self) -> dict[str, int]:
        totals = {reason: 0 for reason in DROP_REASONS}
        for b in self.bins.values():
            for reason, count in b.dropped.items():
                totals[reason] = totals.get(reason, 0) + count
        return totals

    @property
    def errors(self) -> dict[str, int]:
        totals = {reason: 0 for reason in ERROR_REASONS}
        for b in self.bins.values():
            for reason, count in b.errors.items():
                totals[reason] = totals.get(reason, 0) + count
        return totals

    @property
    def complete(self) -> bool:
        """Every bin reached its target."""
        return all(b.shortfall == 0 for b in self.bins.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "out": self.out,
            "expert": self.expert,
            "judge": self.judge,
            "complete": self.complete,
            "kept": self.kept,
            "dropped": self.dropped,
            "errors": self.errors,
            "bins": {name: {**asdict(b), "shortfall": b.shortfall} for name, b in self.bins.items()},
            "this_run": self.this_run,
            "warnings": self.warnings,
        }

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)

    def format_table(self) -> str:
        reasons = [r for r in DROP_REASONS if self.dropped.get(r)] or ["leakage"]
        header = ["bin", "target", "kept", *reasons, "errors", "untried", "available"]
        rows = []
        for name, b in self.bins.items():
            rows.append(
                [
                    name,
                    b.target,
                    b.kept,
                    *(b.dropped.get(r, 0) for r in reasons),
                    sum(b.errors.values()),
                    b.untried,
                    b.available,
                ]
            )
        totals = ["all", sum(b.target for b in self.bins.values()), self.kept]
        totals += [self.dropped.get(r, 0) for r in reasons]
        totals += [
            sum(self.errors.values()),
            sum(b.untried for b in self.bins.values()),
            sum(b.available for b in self.bins.values()),
        ]
        rows.append(totals)
        widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
        lines = [
            "  ".join(str(v).rjust(w) for v, w in zip(row, widths, strict=True)) for row in [header, *rows]
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        status = (
            "complete"
            if self.complete
            else "INCOMPLETE: "
            + ", ".join(f"{n} short by {b.shortfall}" for n, b in self.bins.items() if b.shortfall)
        )
        run = self.this_run
        summary = (
            f"AesCoT build ({self.expert}, judge {self.judge or 'none'}) -> {self.out}: {status}\n"
            f"this run: {run.get('processed', 0)} items in {run.get('elapsed_s', 0.0):.1f}s"
        )
        endpoint = run.get("endpoint") or {}
        if endpoint:
            summary += ", " + ", ".join(f"{k} {v}" for k, v in sorted(endpoint.items()))
        parts = [summary, *lines, *(f"warning: {w}" for w in self.warnings)]
        return "\n".join(parts)
