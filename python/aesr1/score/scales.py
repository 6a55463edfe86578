"""Score scales: the model's native [0, 1] and the linear maps to the scales people report on.

A scale is written ``lo-hi`` (``0-1``, ``1-5``, ``1-10``, ``0-100``, ``-1-1``); a score s on [0, 1]
becomes ``lo + s (hi - lo)`` and a standard deviation ``σ (hi - lo)``. Every output names its scale,
so a number is never read on the wrong one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_SCALE = re.compile(rf"^\s*({_NUMBER})\s*-\s*({_NUMBER})\s*$")


@dataclass(frozen=True)
class Scale:
    """A closed score range [lo, hi] with lo < hi; `Scale.parse("1-5")` reads the ``lo-hi`` form."""

    lo: float = 0.0
    hi: float = 1.0

    def __post_init__(self) -> None:
        for name in ("lo", "hi"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"scale {name} must be a finite number, got {value!r}")
        if not self.lo < self.hi:
            raise ValueError(
                f"scale {self.name!r}: the low end must be below the high end (did you mean "
                f"'{_fmt(self.hi)}-{_fmt(self.lo)}'?)"
            )

    @classmethod
    def parse(cls, text: str | Scale | tuple[float, float]) -> Scale:
        """``"1-5"`` → Scale(1, 5); a Scale or a (lo, hi) pair is checked and returned. Raises
        ValueError naming the text when it is not ``lo-hi`` with lo < hi."""
        if isinstance(text, Scale):
            return text
        if isinstance(text, (tuple, list)) and len(text) == 2:
            return cls(float(text[0]), float(text[1]))
        if not isinstance(text, str):
            raise ValueError(f"scale must be 'lo-hi' such as '0-1' or '1-5', got {text!r}")
        match = _SCALE.match(text)
        if match is None:
            raise ValueError(f"scale {text!r} is not 'lo-hi' (for example '0-1', '1-5', '1-10')")
        return cls(float(match.group(1)), float(match.group(2)))

    @property
    def name(self) -> str:
        return f"{_fmt(self.lo)}-{_fmt(self.hi)}"

    @property
    def width(self) -> float:
        return self.hi - self.lo

    def from_unit(self, value: float | None) -> float | None:
        """A score on [0, 1] on this scale (None stays None)."""
        return None if value is None else self.lo + value * self.width

    def to_unit(self, value: float | None) -> float | None:
        """A score on this scale back on [0, 1] (None stays None)."""
        return None if value is None else (value - self.lo) / self.width

    def spread_from_unit(self, std: float | None) -> float | None:
        """A standard deviation on [0, 1] on this scale."""
        return None if std is None else std * self.width

    def spread_to_unit(self, std: float | None) -> float | None:
        return None if std is None else std / self.width


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


#: The model's own scale (Appendix B: "a float between 0 and 1").
UNIT = Scale(0.0, 1.0)

__all__ = ["UNIT", "Scale"]
