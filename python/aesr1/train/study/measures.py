"""What the study reads off one finished run: held-out measures and the RAPO training curves.

A run directory is the pipeline's (`aesr1.train.pipeline`): `results.json` holds the held-out rows
`sft` and `rapo` with every image's prediction and ground truth, `rapo/rapo_metrics.jsonl` one row
per logged RAPO step. From them:

- plcc, srcc, parse_failures: as the pipeline reports them (`aesr1.train.evaluation`).
- mae: mean |prediction - ground truth| over the images with a parsed prediction.
- w1: Wasserstein-1 distance between the predicted scores (images with a parsed prediction) and the
  ground-truth scores of all held-out images (`scipy.stats.wasserstein_distance`): how far the
  predicted score distribution is from the true one (the paper's Fig. 1a comparison).
- start_entropy: mean token entropy of the starting policy's own samples at the rollout temperature,
  from RAPO's first optimiser step (whose mini-batch the starting policy sampled; the ratio is 1).
  It belongs to the cold start, so a variant's `@sft` operand has the same value.
- final_entropy: the same at the last logged RAPO steps (mean over the last tenth of them).
- start_length / final_length: mean completion length in tokens at the first / last RAPO rounds
  (reasoning that RL collapsed into a bare answer would shrink it); length_kept = final / start.
- gain_plcc / gain_srcc: RAPO's value minus its cold start's.
- *_expected: plcc, srcc, mae, w1 of the same models scored in `expected` mode (the answer's digit
  distribution read after a greedy critique, `aesr1.score.expected`), when the study ran it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

#: Every measure a report table or a claim check can name, with its column title.
MEASURES: dict[str, str] = {
    "plcc": "PLCC",
    "srcc": "SRCC",
    "mae": "MAE",
    "w1": "W1",
    "parse_failures": "parse failures",
    "start_entropy": "start entropy",
    "final_entropy": "final entropy",
    "start_length": "start length",
    "final_length": "final length",
    "length_kept": "length kept",
    "gain_plcc": "ΔPLCC",
    "gain_srcc": "ΔSRCC",
    "plcc_expected": "PLCC (expected)",
    "srcc_expected": "SRCC (expected)",
    "mae_expected": "MAE (expected)",
    "w1_expected": "W1 (expected)",
}

#: Curves of the Fig. 6 analogue: metric names of `rapo_metrics.jsonl`.
CURVES = (
    "reward/total",
    "reward/rank",
    "reward/abs",
    "reward/binary",
    "kl",
    "entropy",
    "clip_frac_low",
    "clip_frac_high",
    "unparseable",
    "completion_length/mean",
)


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def distribution_measures(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """mae and w1 of predictions `pred` (NaN where unparsed) against ground truth `gt` (module docstring)."""
    from scipy.stats import wasserstein_distance

    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"pred has shape {pred.shape} but gt has {gt.shape}")
    ok = np.isfinite(pred)
    if not ok.any():
        return {"mae": math.nan, "w1": math.nan}
    return {
        "mae": float(np.mean(np.abs(pred[ok] - gt[ok]))),
        "w1": float(wasserstein_distance(pred[ok], gt)),
    }


def held_out_measures(row: dict[str, Any]) -> dict[str, float]:
    """plcc, srcc, parse_failures, mae, w1 of one `results.json` row."""
    pred = np.array([_number(p) for p in row["pred"]], dtype=np.float64)
    gt = np.array(row["gt"], dtype=np.float64)
    out = {
        "plcc": _number(row.get("plcc")),
        "srcc": _number(row.get("srcc")),
        "parse_failures": _number(row.get("parse_failure_rate")),
    }
    out.update(distribution_measures(pred, gt))
    return out


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics JSONL file (a line a kill cut short is skipped)."""
    rows = []
    path = Path(path)
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def training_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """RAPO's per-step rows of a run (held-out evaluation rows left out), in step order."""
    rows = read_rows(Path(run_dir) / "rapo" / "rapo_metrics.jsonl")
    return sorted((r for r in rows if "entropy" in r), key=lambda r: r["step"])


def _mean_of(rows: list[dict[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else math.nan


def curve_measures(rows: list[dict[str, Any]]) -> dict[str, float]:
    """start/final entropy and completion length from RAPO's training rows (module docstring)."""
    if not rows:
        keys = ("start_entropy", "final_entropy", "start_length", "final_length", "length_kept")
        return dict.fromkeys(keys, math.nan)
    tail = rows[-max(1, len(rows) // 10) :]
    first_round = [r for r in rows if r.get("round") == rows[0].get("round")]
    last_round = [r for r in rows if r.get("round") == rows[-1].get("round")]
    start_length = _mean_of(first_round, "completion_length/mean")
    final_length = _mean_of(last_round, "completion_length/mean")
    return {
        "start_entropy": _number(rows[0].get("entropy")),
        "final_entropy": _mean_of(tail, "entropy"),
        "start_length": start_length,
        "final_length": final_length,
        "length_kept": final_length / start_length if start_length > 0 else math.nan,
    }


def expected_measures(path: str | Path) -> dict[str, float]:
    """The *_expected measures of an `expected.json` the study wrote (empty when absent)."""
    from aesr1.train.evaluation import plcc_srcc

    path = Path(path)
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    pred = np.array([_number(p) for p in data["pred"]], dtype=np.float64)
    gt = np.array(data["gt"], dtype=np.float64)
    plcc, srcc = plcc_srcc(pred, gt)
    out = {"plcc": plcc, "srcc": srcc, **distribution_measures(pred, gt)}
    return {f"{key}_expected": value for key, value in out.items()}


def run_measures(run_dir: str | Path, cold_dir: str | Path | None = None) -> dict[str, dict[str, float]]:
    """{"sft": ..., "rapo": ...} measures of a finished RAPO run directory (missing rows absent);
    `cold_dir`, its cold start's directory, holds the cold start's expected-mode scores."""
    run_dir = Path(run_dir)
    homes = {"sft": Path(cold_dir) if cold_dir is not None else run_dir, "rapo": run_dir}
    rows = json.loads((run_dir / "results.json").read_text())
    curve = curve_measures(training_rows(run_dir))
    out: dict[str, dict[str, float]] = {}
    for stage in ("sft", "rapo"):
        if stage in rows:
            measures = held_out_measures(rows[stage])
            measures.update(expected_measures(homes[stage] / f"expected_{stage}.json"))
            out[stage] = measures
    # The cold start's entropy and length are those its samples had at RAPO's first round.
    starts = {k: curve[k] for k in ("start_entropy", "start_length")}
    if "sft" in out:
        out["sft"].update(starts)
    if "rapo" in out:
        out["rapo"].update(curve)
        if "sft" in out:
            out["rapo"]["gain_plcc"] = out["rapo"]["plcc"] - out["sft"]["plcc"]
            out["rapo"]["gain_srcc"] = out["rapo"]["srcc"] - out["sft"]["srcc"]
    return out
