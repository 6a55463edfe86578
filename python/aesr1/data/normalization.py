"""Score ranges and the normalisation of mean opinion scores to [0, 1].

Every loader maps a score `s` given on the dataset's documented range [lo, hi] to (s - lo) / (hi - lo)
and a per-image standard deviation to std / (hi - lo) (same affine map without the shift), so scores,
bins (Appendix E.2) and the absolute reward of Eq. 6 all live on one scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Scores this far outside the stated range (after rounding in the distributed files) are clipped;
#: anything further out is an error in the user's stated range or file.
_RANGE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class ScoreRange:
    """The documented score range [lo, hi] of a dataset."""

    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)) or not self.lo < self.hi:
            raise ValueError(f"score_range must be finite with lo < hi, got ({self.lo!r}, {self.hi!r})")

    @property
    def width(self) -> float:
        return self.hi - self.lo

    def normalize(self, score: float, where: str = "") -> float:
        """(score - lo) / (hi - lo); raises ValueError naming `where` when score lies outside [lo, hi]."""
        score = float(score)
        if not math.isfinite(score):
            raise ValueError(f"score {score!r} {where} is not a finite number".replace("  ", " "))
        value = (score - self.lo) / self.width
        if value < -_RANGE_TOLERANCE or value > 1.0 + _RANGE_TOLERANCE:
            raise ValueError(
                f"score {score!r} {where} lies outside the stated range [{self.lo:g}, {self.hi:g}]; "
                "give the dataset's score_range".replace("  ", " ")
            )
        return min(1.0, max(0.0, value))

    def normalize_std(self, std: float | None, where: str = "") -> float | None:
        """std / (hi - lo), or None when the std is unknown (None, empty or NaN)."""
        if std is None:
            return None
        std = float(std)
        if math.isnan(std):
            return None
        if std < 0 or math.isinf(std):
            raise ValueError(f"standard deviation {std!r} {where} must be finite and >= 0".replace("  ", " "))
        return std / self.width


def parse_score_range(value: ScoreRange | Sequence[float] | str, name: str = "score_range") -> ScoreRange:
    """A ScoreRange from a ScoreRange, a (lo, hi) pair or a string ``"lo..hi"`` (CLI form)."""
    if isinstance(value, ScoreRange):
        return value
    if isinstance(value, str):
        parts = value.split("..")
        if len(parts) != 2:
            raise ValueError(f"{name} must be written 'lo..hi' (e.g. '1..10'), got {value!r}")
        try:
            return ScoreRange(float(parts[0]), float(parts[1]))
        except ValueError as error:
            raise ValueError(f"{name} must be written 'lo..hi' with numbers, got {value!r}") from error
    try:
        lo, hi = value
        return ScoreRange(float(lo), float(hi))
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a (lo, hi) pair or 'lo..hi', got {value!r}") from error


def vote_mean_std(counts: Sequence[float], levels: Sequence[float]) -> tuple[float, float]:
    """Mean opinion score and standard deviation of a vote histogram.

    MOS = sum_i l_i c_i / sum_i c_i and std = sqrt(sum_i c_i (l_i - MOS)^2 / sum_i c_i), the spread of
    the raters' votes (population form: the histogram is the whole population of votes).
    """
    if len(counts) != len(levels):
        raise ValueError(f"counts has {len(counts)} entries but levels has {len(levels)}")
    total = float(sum(counts))
    if total <= 0:
        raise ValueError("the vote histogram is empty (no votes)")
    mean = sum(level * count for level, count in zip(levels, counts, strict=True)) / total
    variance = sum(count * (level - mean) ** 2 for level, count in zip(levels, counts, strict=True)) / total
    return mean, math.sqrt(max(variance, 0.0))


def vote_mean_std_rows(counts, levels: Sequence[float]):
    """`vote_mean_std` of every row of an (N, L) vote-count array at once (float64 arrays (N,), (N,));
    rows without votes give NaN."""
    import numpy as np

    counts = np.asarray(counts, dtype=np.float64)
    levels = np.asarray(levels, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[1] != levels.size:
        raise ValueError(f"counts must have shape (N, {levels.size}), got {counts.shape}")
    total = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = counts @ levels / total
        variance = (counts * (levels[None, :] - mean[:, None]) ** 2).sum(axis=1) / total
    return mean, np.sqrt(np.maximum(variance, 0.0))
