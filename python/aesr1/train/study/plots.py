"""The study's figures (matplotlib, Agg): RAPO's training curves per variant (the paper's Fig. 6)
and predicted vs true score distributions per variant (Fig. 1a)."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np

from aesr1.train.durable import publish_file, staging_path
from aesr1.train.study.measures import CURVES, training_rows

PANEL_TITLES = {
    "reward/total": "total reward",
    "reward/rank": "rank reward (Eq. 4)",
    "reward/abs": "error reward (Eq. 6)",
    "reward/binary": "binary reward (Eq. 13)",
    "kl": "KL to the cold start (k3)",
    "entropy": "token entropy",
    "clip_frac_low": "clip fraction (low)",
    "clip_frac_high": "clip fraction (high)",
    "unparseable": "unparseable share",
    "completion_length/mean": "completion length (tokens)",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = staging_path(path)
    figure.savefig(staged, dpi=110, format="png")
    plt.close(figure)
    publish_file(staged, path)
    return path


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Moving average over `window` steps, NaN-aware (a step without a value does not count)."""
    if window <= 1:
        return values
    finite = np.isfinite(values)
    kernel = np.ones(window)
    sums = np.convolve(np.where(finite, values, 0.0), kernel, mode="same")
    counts = np.convolve(finite.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def mean_curve(run_dirs: list[Path], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, mean over runs) of metric `key` at the steps every run logged it."""
    series = []
    for directory in run_dirs:
        rows = training_rows(directory)
        series.append({r["step"]: float(r[key]) for r in rows if r.get(key) is not None})
    if not series:
        return np.array([]), np.array([])
    steps = sorted(set.intersection(*(set(s) for s in series)))
    values = np.array([[s[step] for step in steps] for s in series], dtype=np.float64)
    return np.array(steps), values.mean(axis=0) if len(steps) else np.array([])


def plot_training(runs: dict[str, list[Path]], path: Path, *, title: str = "") -> Path | None:
    """One panel per curve of `CURVES`, one line per variant (mean over its seeds, moving average)."""
    plt = _pyplot()
    runs = {name: dirs for name, dirs in runs.items() if dirs}
    if not runs:
        return None
    columns = 5
    rows = math.ceil(len(CURVES) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.3 * columns, 2.6 * rows), squeeze=False)
    for axis, key in zip(axes.flat, CURVES, strict=False):
        for name, dirs in runs.items():
            steps, values = mean_curve(dirs, key)
            if steps.size:
                window = max(1, steps.size // 25)
                axis.plot(steps, _smooth(values, window), linewidth=1.3, label=name)
        axis.set_title(PANEL_TITLES.get(key, key), fontsize=9)
        axis.set_xlabel("RAPO step", fontsize=8)
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(CURVES) :]:
        axis.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), frameon=False, fontsize=8)
    seeds = max(len(d) for d in runs.values())
    figure.suptitle(f"{title}: RAPO training curves (mean over {seeds} seed(s), moving average)", fontsize=10)
    figure.tight_layout(rect=(0, 0.06, 1, 0.95))
    return _save(figure, path)


def _predictions(run_dirs: list[Path], row: str) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Pooled predictions and ground truth of `row` over runs, and each run's W1."""
    from aesr1.train.study.measures import held_out_measures

    preds, gts, w1 = [], [], []
    for directory in run_dirs:
        rows = json.loads((directory / "results.json").read_text())
        if row not in rows:
            continue
        preds.append(np.array([np.nan if p is None else p for p in rows[row]["pred"]], dtype=np.float64))
        gts.append(np.array(rows[row]["gt"], dtype=np.float64))
        w1.append(held_out_measures(rows[row])["w1"])
    if not preds:
        return np.array([]), np.array([]), []
    return np.concatenate(preds), np.concatenate(gts), w1


def _expected(run_dirs: list[Path], name: str) -> np.ndarray:
    values = []
    for directory in run_dirs:
        path = directory / name
        if path.is_file():
            values += [np.nan if p is None else p for p in json.loads(path.read_text())["pred"]]
    return np.array(values, dtype=np.float64)


def plot_distributions(runs: dict[str, list[Path]], path: Path, *, title: str = "") -> Path | None:
    """Per variant: histograms of the true scores, the cold start's and RAPO's predictions (pooled
    over seeds; sampled-mean protocol of the held-out evaluation), plus RAPO's expected-mode scores
    when the study computed them."""
    plt = _pyplot()
    runs = {name: dirs for name, dirs in runs.items() if dirs}
    if not runs:
        return None
    columns = min(3, len(runs))
    rows = math.ceil(len(runs) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    bins = np.linspace(0.0, 1.0, 41)
    for axis, (name, dirs) in zip(axes.flat, runs.items(), strict=False):
        gt = None
        for row, colour, style in (("sft", "#4c72b0", "--"), ("rapo", "#dd8452", "-")):
            pred, truth, w1 = _predictions(dirs, row)
            if gt is None and truth.size:
                gt = truth
            finite = pred[np.isfinite(pred)]
            if finite.size:
                label = f"{'cold start' if row == 'sft' else 'RAPO'} (W1 {np.mean(w1):.3f})"
                axis.hist(finite, bins=bins, density=True, histtype="step", color=colour, linestyle=style,
                          linewidth=1.5, label=label)  # fmt: skip
        expected = _expected(dirs, "expected_rapo.json")
        expected = expected[np.isfinite(expected)]
        if expected.size:
            axis.hist(expected, bins=bins, density=True, histtype="step", color="#55a868", linestyle=":",
                      linewidth=1.5, label="RAPO, expected mode")  # fmt: skip
        if gt is not None:
            axis.hist(
                gt,
                bins=bins,
                density=True,
                histtype="stepfilled",
                color="black",
                alpha=0.15,
                label="ground truth",
            )
        axis.set_title(name, fontsize=9)
        axis.set_xlim(0, 1)
        axis.set_xlabel("score", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.legend(frameon=False, fontsize=6)
    for axis in list(axes.flat)[len(runs) :]:
        axis.axis("off")
    heading = f"{title}: held-out score distributions, predicted vs true (seeds pooled)"
    figure.suptitle(textwrap.fill(heading, width=int(11 * 4.2 * columns)), fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.94 if len(heading) <= 11 * 4.2 * columns else 0.88))
    return _save(figure, path)
