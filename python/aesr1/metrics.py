"""Evaluation metrics of the paper (§4): PLCC, SRCC and KRCC between predicted and true scores.

Needs only numpy; computed natively in O(n log n), with results that do not depend on the number
of threads:

* `plcc`: Pearson's linear correlation coefficient (agrees with ``scipy.stats.pearsonr`` to
  ~1e-15 relative);
* `srcc`: Spearman's rank correlation, tied values sharing their average rank (as
  ``scipy.stats.spearmanr``; exact integer sums);
* `krcc`: Kendall's tau-b, bit-identical to ``scipy.stats.kendalltau``.

NaN or infinite values raise ValueError unless ``nan_policy="omit"``, which drops every pair with
a non-finite value. Fewer than two points raise ValueError, and so does a masked array with masked
entries (its mask would be lost: use ``.filled(np.nan)`` with ``nan_policy="omit"``). A constant input has no correlation:
the result is NaN and a `ConstantInputWarning` is issued (SciPy's convention).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from aesr1 import _core

__all__ = ["ConstantInputWarning", "Evaluation", "evaluate", "krcc", "plcc", "srcc"]

NanPolicy = Literal["raise", "omit"]


class ConstantInputWarning(RuntimeWarning):
    """An input is constant, so its correlation coefficient is not defined (NaN)."""


@dataclass(frozen=True)
class Evaluation:
    """PLCC, SRCC and KRCC of one prediction set, and the number of pairs used."""

    plcc: float
    srcc: float
    krcc: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _series(value: Any, name: str) -> np.ndarray:
    if isinstance(value, (str, bytes)):
        raise TypeError(f"`{name}` must be numeric, got {type(value).__name__}")
    # `np.asarray` drops a mask and keeps the values under it; what masked means is the caller's call.
    if isinstance(value, np.ma.MaskedArray) and np.ma.is_masked(value):
        raise ValueError(
            f"`{name}` is a masked array with {int(np.ma.count_masked(value))} masked entries, which "
            f"would be read as their underlying values; pass `{name}.filled(np.nan)` with "
            f"nan_policy='omit' to leave them out"
        )
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{name}` must be a numeric array: {err}") from None
    if array.dtype.kind not in "biuf":
        raise TypeError(f"`{name}` must be numeric, got dtype {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D, got shape {array.shape}")
    return np.ascontiguousarray(array, dtype=np.float64)


def _inputs(pred: Any, gt: Any, nan_policy: str) -> tuple[np.ndarray, np.ndarray, bool]:
    if nan_policy not in ("raise", "omit"):
        raise ValueError(f"`nan_policy` must be 'raise' or 'omit', got {nan_policy!r}")
    return _series(pred, "pred"), _series(gt, "gt"), nan_policy == "omit"


def _warn_if_nan(value: float, stacklevel: int = 3) -> float:
    if np.isnan(value):
        warnings.warn(
            "An input is constant; the correlation coefficient is not defined (NaN).",
            ConstantInputWarning,
            stacklevel=stacklevel,
        )
    return value


def plcc(pred: Any, gt: Any, *, nan_policy: NanPolicy = "raise") -> float:
    """Pearson linear correlation coefficient between `pred` and `gt` (1-D, same length)."""
    x, y, omit = _inputs(pred, gt, nan_policy)
    return _warn_if_nan(_core.plcc(x, y, omit))


def srcc(pred: Any, gt: Any, *, nan_policy: NanPolicy = "raise") -> float:
    """Spearman rank-order correlation coefficient; ties share their average rank."""
    x, y, omit = _inputs(pred, gt, nan_policy)
    return _warn_if_nan(_core.srcc(x, y, omit))


def krcc(pred: Any, gt: Any, *, nan_policy: NanPolicy = "raise") -> float:
    """Kendall rank correlation coefficient tau-b, bit-identical to ``scipy.stats.kendalltau``."""
    x, y, omit = _inputs(pred, gt, nan_policy)
    return _warn_if_nan(_core.krcc(x, y, omit))


def evaluate(pred: Any, gt: Any, *, nan_policy: NanPolicy = "raise") -> Evaluation:
    """PLCC, SRCC and KRCC in one call (validation and omission done once, metrics in parallel)."""
    x, y, omit = _inputs(pred, gt, nan_policy)
    p, s, k, n = _core.evaluate(x, y, omit)
    if np.isnan(p) or np.isnan(s) or np.isnan(k):
        _warn_if_nan(float("nan"))
    return Evaluation(plcc=p, srcc=s, krcc=k, n=n)
