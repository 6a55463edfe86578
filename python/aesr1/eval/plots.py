"""PNG plots of an evaluation: predicted vs ground-truth score distributions (the paper's Fig. 1a) and a
scatter of predictions against ground truth with the fitted logistic curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def _density(values: np.ndarray, grid: np.ndarray) -> np.ndarray | None:
    from scipy.stats import gaussian_kde

    if values.size < 2 or np.ptp(values) == 0:
        return None
    return gaussian_kde(values)(grid)


def plot_distributions(pred, gt, title: str, path: str | Path, bins: int = 20) -> Path:
    """Histograms (density) and kernel density estimates of ground-truth and predicted scores on [0, 1],
    like Fig. 1a. `pred` may be empty (nothing parsed): only the ground truth is drawn."""
    plt = _pyplot()
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    grid = np.linspace(0.0, 1.0, 201)
    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    edges = np.linspace(0.0, 1.0, bins + 1)
    for values, label, colour in ((gt, "ground truth", "#4c72b0"), (pred, "prediction", "#dd8452")):
        if values.size == 0:
            continue
        axis.hist(
            values, bins=edges, density=True, alpha=0.35, color=colour, label=f"{label} (n={values.size})"
        )
        density = _density(values, grid)
        if density is not None:
            axis.plot(grid, density, color=colour, linewidth=1.8)
    axis.set_xlim(0.0, 1.0)
    axis.set_xlabel("score")
    axis.set_ylabel("density")
    axis.set_title(title)
    axis.legend(frameon=False, fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_scatter(pred, gt, title: str, path: str | Path, logistic_params=None) -> Path:
    """Predicted vs ground-truth scores, the identity line and, when given, the fitted logistic curve."""
    from aesr1.eval.correlation import logistic4

    plt = _pyplot()
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    figure, axis = plt.subplots(figsize=(4.6, 4.4))
    axis.scatter(pred, gt, s=10, alpha=0.6, color="#4c72b0", label=f"images (n={pred.size})")
    axis.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--", label="identity")
    if logistic_params is not None and pred.size:
        grid = np.linspace(min(0.0, pred.min()), max(1.0, pred.max()), 200)
        axis.plot(
            grid, logistic4(grid, *logistic_params), color="#c44e52", linewidth=1.8, label="logistic fit"
        )
    axis.set_xlim(0.0, 1.0)
    axis.set_ylim(0.0, 1.0)
    axis.set_xlabel("predicted score")
    axis.set_ylabel("ground-truth score")
    axis.set_title(title)
    axis.legend(frameon=False, fontsize=8, loc="upper left")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
