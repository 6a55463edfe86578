"""PLCC / SRCC / KRCC of one dataset (from the native `aesr1.metrics`) and the optional 4-parameter
logistic fit that IQA papers apply before PLCC (VQEG, 2000)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np


def logistic4(x, beta1: float, beta2: float, beta3: float, beta4: float):
    """f(x) = beta2 + (beta1 - beta2) / (1 + exp(-(x - beta3) / |beta4|)): monotonic map of predictions
    onto the ground-truth scale (VQEG Phase I final report, 2000)."""
    z = np.clip(-(np.asarray(x, dtype=np.float64) - beta3) / abs(beta4), -500.0, 500.0)
    return beta2 + (beta1 - beta2) / (1.0 + np.exp(z))


def fit_logistic(pred: np.ndarray, gt: np.ndarray) -> list[float] | None:
    """Least-squares fit of `logistic4` from predictions to ground truth (scipy curve_fit); None if the
    fit does not converge or the predictions are constant."""
    from scipy.optimize import curve_fit

    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    if pred.size < 4 or np.ptp(pred) == 0:
        return None
    p0 = [float(gt.max()), float(gt.min()), float(np.mean(pred)), float(np.std(pred)) or 0.1]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = curve_fit(logistic4, pred, gt, p0=p0, maxfev=20000)
    except (RuntimeError, ValueError, TypeError):
        return None
    if not np.all(np.isfinite(params)):
        return None
    return [float(p) for p in params]


@dataclass
class Correlations:
    """Correlations of one dataset's scored images (NaN where undefined, with the reason in `note`)."""

    n: int
    plcc: float = math.nan
    srcc: float = math.nan
    krcc: float = math.nan
    plcc_logistic: float = math.nan
    logistic_params: list[float] | None = None
    note: str = ""
    warnings: list[str] = field(default_factory=list)


def correlations(pred, gt, dataset: str = "") -> Correlations:
    """PLCC, SRCC and KRCC (Kendall tau-b) of `pred` against `gt` from `aesr1.metrics`, and PLCC after
    the logistic fit. Fewer than 2 scored images or constant predictions give NaN with a warning
    instead of an error, so a table is always produced."""
    from aesr1 import metrics

    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    result = Correlations(n=int(pred.size))
    where = f" on {dataset}" if dataset else ""
    if pred.size < 2:
        result.note = f"{pred.size} scored image(s): correlations need at least 2"
        warnings.warn(f"{result.note}{where}; metrics are NaN", RuntimeWarning, stacklevel=2)
        return result
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result.plcc = float(metrics.plcc(pred, gt))
        result.srcc = float(metrics.srcc(pred, gt))
        result.krcc = float(metrics.krcc(pred, gt))
        params = fit_logistic(pred, gt)
        if params is not None:
            result.logistic_params = params
            result.plcc_logistic = float(metrics.plcc(logistic4(pred, *params), gt))
    result.warnings = [str(w.message) for w in caught]
    if np.ptp(pred) == 0:
        result.note = "all predictions are equal: correlations are undefined"
    for message in result.warnings:
        warnings.warn(f"{message}{where}", RuntimeWarning, stacklevel=2)
    return result
