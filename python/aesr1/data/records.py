"""The one record type every dataset loader, the synthetic generator and AesCoT exchange."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ScoredImage:
    """An image with its ground-truth aesthetic score normalised to [0, 1].

    Attributes:
        image: path to the image file on disk.
        score: mean opinion score normalised to [0, 1] by (s - lo) / (hi - lo).
        std: per-image standard deviation of the opinions on the same [0, 1] scale, if known.
        source: dataset name (``"ava"``, ``"tad66k"``, ``"synthetic"``, ...).
        id: identifier unique within `source`.
        attributes: optional visible properties (the synthetic dataset records how it drew the image,
            which the template AesCoT expert turns into critiques).
    """

    image: str
    score: float
    source: str
    id: str
    std: float | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
