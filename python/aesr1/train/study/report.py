"""The study's report: `study.json` (every number), `<grid>.md` tables with verdicts, and the plots.

Tables give mean ± sample standard deviation over seeds (n in the header); the cold starts a grid's
variants start from get their own rows. Verdicts follow `aesr1.train.study.verdicts`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from aesr1.jsonio import dumps
from aesr1.train.durable import atomic_write_text
from aesr1.train.study.grid import Grid
from aesr1.train.study.measures import MEASURES, run_measures
from aesr1.train.study.plan import DONE, Plan
from aesr1.train.study.verdicts import judge

#: Columns of a grid's table (the expected-mode ones only when the study scored in that mode).
COLUMNS = ("plcc", "srcc", "mae", "w1", "parse_failures", "start_entropy", "gain_plcc", "gain_srcc")
EXPECTED_COLUMNS = ("plcc_expected", "srcc_expected", "w1_expected")
COLD_COLUMNS = ("plcc", "srcc", "mae", "w1", "parse_failures", "start_entropy")

VERDICT_RULES = (
    "Verdict rules: for each check, the per-seed paired difference a - b; it holds in a seed when its "
    "sign is the expected one. A check holds (is reversed) when it does in every seed; a claim is "
    "consistent with the paper when all its checks hold, contradicted when all are reversed, mixed "
    "otherwise. The one-sided sign-test p-value is given: with 3 seeds it is at least 0.125, so "
    "agreement in every seed shows a direction, not statistical significance."
)


def mean_std(values: list[float]) -> tuple[float, float, int]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan, 0
    mean = float(np.mean(finite))
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan
    return mean, std, len(finite)


def _cell(values: list[float], measure: str) -> str:
    mean, std, n = mean_std(values)
    if n == 0:
        return "n/a"
    percent = measure == "parse_failures"
    scale, digits = (100.0, 1) if percent else (1.0, 2 if "entropy" in measure else 4)
    text = f"{scale * mean:.{digits}f}"
    if n > 1:
        text += f" ± {scale * std:.{digits}f}"
    return text + ("%" if percent else "")


def _title(measure: str) -> str:
    return MEASURES[measure]


def collect(plan: Plan, grid: Grid) -> dict[str, Any]:
    """Per-variant, per-seed measures of the finished runs of `grid` (unfinished ones listed)."""
    variants: dict[str, Any] = {}
    missing = []
    cold_starts: dict[str, dict[str, Any]] = {}
    for variant in grid.variants:
        seeds: dict[int, Any] = {}
        for seed, (cold, rapo) in sorted(plan.runs[grid.name][variant.name].items()):
            if not (rapo.directory / DONE).is_file():
                missing.append(f"{variant.name} (seed {seed})")
                continue
            measures = run_measures(rapo.directory, cold.directory)
            measures["cold_start"] = cold.key
            measures["run"] = rapo.key
            seeds[seed] = measures
            entry = cold_starts.setdefault(_cold_group(plan, grid, cold.key), {"seeds": {}, "stages": {}})
            entry["seeds"][seed] = measures.get("sft", {})
            entry["stages"][seed] = cold.key
        variants[variant.name] = {"set": list(variant.set), "seeds": seeds}
    return {"variants": variants, "cold_starts": cold_starts, "missing": missing}


def _cold_group(plan: Plan, grid: Grid, cold_key: str) -> str:
    """A name for a cold start across seeds: the variants of `grid` that start from it."""
    users = sorted(
        {
            variant
            for variant, seeds in plan.runs[grid.name].items()
            for cold, _ in seeds.values()
            if cold.key == cold_key
        }
    )
    return ", ".join(users)


def grid_markdown(grid: Grid, data: dict[str, Any], claims: list, seeds: list[int]) -> str:
    """The grid's section: description, cold-start table, variant table and claims."""
    variants = data["variants"]
    has_expected = any(
        any(k.endswith("_expected") for k in s.get("rapo", {}))
        for v in variants.values()
        for s in v["seeds"].values()
    )
    columns = COLUMNS + (EXPECTED_COLUMNS if has_expected else ())
    cold_columns = COLD_COLUMNS + (EXPECTED_COLUMNS if has_expected else ())
    n = max((len(v["seeds"]) for v in variants.values()), default=0)
    lines = [f"## {grid.title}", ""]
    if grid.description:
        lines += [grid.description, ""]
    lines += [
        f"Seeds {', '.join(map(str, seeds))}; each cell is the mean ± sample standard deviation over the "
        f"n = {n} seeds that finished. PLCC, SRCC, MAE, W1 (Wasserstein-1 distance between the predicted "
        "and true score distributions) and parse failures on the held-out images; start entropy is the "
        "starting policy's mean token entropy on its own samples (RAPO's first step); ΔPLCC / ΔSRCC are "
        "RAPO's gain over its cold start.",
        "",
        "Cold starts:",
        "",
        "| cold start of | " + " | ".join(_title(c) for c in cold_columns) + " |",
        "|---|" + "---|" * len(cold_columns),
    ]
    for users, entry in data["cold_starts"].items():
        cells = [_cell([s.get(c, math.nan) for s in entry["seeds"].values()], c) for c in cold_columns]
        lines.append(f"| {users} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "After RAPO:",
        "",
        "| variant | " + " | ".join(_title(c) for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name, entry in variants.items():
        rows = [s.get("rapo", {}) for s in entry["seeds"].values()]
        cells = [_cell([r.get(c, math.nan) for r in rows], c) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if data["missing"]:
        lines += ["", f"Not finished (left out): {', '.join(data['missing'])}."]
    if claims:
        lines += ["", "Claims:", ""] + [c.markdown() for c in claims] + ["", VERDICT_RULES]
    return "\n".join(lines) + "\n"


def _seed_values(data: dict[str, Any]) -> dict[str, dict[int, dict[str, dict[str, float]]]]:
    return {name: dict(entry["seeds"].items()) for name, entry in data["variants"].items()}


def stage_times(plan: Plan) -> dict[str, dict[str, float]]:
    """Wall and CPU seconds of each finished stage (from its marker; a stage a kill interrupted
    counts its last invocation only)."""
    out = {}
    for stage in plan.stages:
        marker = stage.directory / DONE
        if marker.is_file():
            values = json.loads(marker.read_text())
            out[stage.key] = {"seconds": values["seconds"], "cpu_seconds": values.get("cpu_seconds")}
    return out


def busy_seconds(study_log: Path, keys: set[str]) -> float:
    """Seconds during which at least one of the stages `keys` was running, from `study_log.jsonl`
    (the union of each finished stage's start-to-done span, so runs side by side count once and the
    time between a kill and its `--resume` not at all)."""
    if not study_log.is_file():
        return 0.0
    started: dict[str, float] = {}
    spans = []
    for line in study_log.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:  # a line a kill cut short
            continue
        if not isinstance(event, dict) or event.get("stage") not in keys:
            continue
        if event.get("event") == "start":
            started[event["stage"]] = event["time"]
        elif event.get("event") == "done" and event["stage"] in started:
            spans.append((started.pop(event["stage"]), event["time"]))
    total, reach = 0.0, float("-inf")
    for begin, end in sorted(spans):
        if end > reach:
            total += end - max(begin, reach)
            reach = end
    return total


def write_report(
    plan: Plan, grids: list[Grid], seeds: list[int], report_dir: str | Path, *, plots: bool = True
) -> dict[str, Any]:
    """Write `study.json`, `<grid>.md` per grid and the PNGs into `report_dir`; returns the JSON data."""
    from aesr1.train.study.plots import plot_distributions, plot_training

    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    times = stage_times(plan)
    study_log = plan.stages[0].directory.parent.parent / "study_log.jsonl" if plan.stages else Path()
    unfinished = {"seconds": None, "cpu_seconds": None}
    out: dict[str, Any] = {
        "seeds": seeds,
        "stages": {
            s.key: {
                "kind": s.kind,
                "label": s.label(),
                **times.get(s.key, unfinished),
                "uses": [list(u) for u in s.uses],
            }
            for s in plan.stages
        },
        "runs_finished": len(times),
        "runs_planned": len(plan.stages),
        "stage_seconds": round(sum(t["seconds"] for t in times.values()), 1),
        "wall_seconds": round(busy_seconds(study_log, set(times)), 1) if plan.stages else 0.0,
        "written": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "grids": {},
    }
    for grid in grids:
        data = collect(plan, grid)
        claims = [judge(claim, _seed_values(data)) for claim in grid.claims]
        markdown = grid_markdown(grid, data, claims, seeds)
        atomic_write_text(report_dir / f"{grid.name}.md", markdown)
        figures = []
        if plots:
            runs = {
                variant: [
                    rapo.directory
                    for seed, (_, rapo) in sorted(by_seed.items())
                    if (rapo.directory / DONE).is_file()
                ]
                for variant, by_seed in plan.runs[grid.name].items()
            }
            figures.append(plot_training(runs, report_dir / f"{grid.name}_training.png", title=grid.title))
            figures.append(
                plot_distributions(runs, report_dir / f"{grid.name}_distributions.png", title=grid.title)
            )
        out["grids"][grid.name] = {
            "title": grid.title, "description": grid.description, "base": grid.base, "set": list(grid.set),
            **data, "claims": [c.to_dict() for c in claims], "markdown": markdown,
            "figures": [f.name for f in figures if f is not None],
        }  # fmt: skip
    atomic_write_text(report_dir / "study.json", dumps(out, indent=1))
    return out
