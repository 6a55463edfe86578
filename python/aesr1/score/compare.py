"""Which of two images is more aesthetic, as a probability: the FRank preference of the paper's
Eq. 3,

    P(A more aesthetic than B) = Φ((μ_A − μ_B) / sqrt(σ_A² + σ_B² + γ)),

with each image's score taken as Gaussian, s ~ N(μ, σ²) (μ the score, σ its std). It is the
probability the RAPO rank reward (Eq. 4) is built from, computed by the same native code.

    from aesr1.score import Scorer
    from aesr1.score.compare import compare

    result = compare("a.jpg", "b.jpg", scorer=Scorer("path/to/model", num_samples=4, temperature=1.0))
    print(result.probability)  # P(a.jpg more aesthetic than b.jpg)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aesr1 import _core
from aesr1.score.scales import UNIT, Scale

#: γ of Eq. 3 on the unit scale, as in the RAPO rank reward (`aesr1.rewards.rank_reward`).
DEFAULT_GAMMA = 1e-6


def preference_probability(mu_a, std_a, mu_b, std_b, gamma: float = DEFAULT_GAMMA):
    """P(A more aesthetic than B) = Φ((μ_A − μ_B) / sqrt(σ_A² + σ_B² + γ)), paper Eq. 3.

    Scores and standard deviations are on the model's native [0, 1] scale, where γ (in squared
    score units) is meant. Arguments are floats or arrays that broadcast together; the result is a
    float when all four are scalars, else a float64 array of the broadcast shape.
    P(A, B) + P(B, A) = 1, and equal scores give exactly 1/2.

    Raises ValueError naming the argument for a non-finite score, a negative or non-finite std,
    γ < 0, or a pair where σ_A² + σ_B² + γ is 0 (both stds 0 with γ = 0: a division by zero).
    """
    values = [np.asarray(value, dtype=np.float64) for value in (mu_a, std_a, mu_b, std_b)]
    try:
        shape = np.broadcast_shapes(*(value.shape for value in values))
    except ValueError:
        shapes = ", ".join(f"{name} {value.shape}" for name, value in zip(_ARGS, values, strict=True))
        raise ValueError(f"mu_a, std_a, mu_b and std_b must broadcast together, got {shapes}") from None
    flat = [np.ascontiguousarray(np.broadcast_to(value, shape).ravel()) for value in values]
    out = _core.preference_probability(*flat, float(gamma)).reshape(shape)
    return float(out) if out.ndim == 0 else out


_ARGS = ("mu_a", "std_a", "mu_b", "std_b")


@dataclass(frozen=True)
class Comparison:
    """The outcome of comparing image `a` with image `b`.

    Attributes:
        a, b: the images' names (paths, or "<PIL image i>").
        probability: P(a more aesthetic than b), Eq. 3 on the unit scale.
        score_a, std_a, score_b, std_b: the scores and their stds on `scale` (std 0 when the
            scoring mode gives none, as greedy decoding does).
        scale: the scale of the scores: both results' scale when they agree, else the native 0-1.
        gamma: γ of Eq. 3 (unit scale).
    """

    a: str
    b: str
    probability: float
    score_a: float
    std_a: float
    score_b: float
    std_b: float
    scale: Scale = UNIT
    gamma: float = DEFAULT_GAMMA

    @property
    def winner(self) -> str:
        """The image more likely to be the more aesthetic one (`a` at exactly 1/2)."""
        return self.a if self.probability >= 0.5 else self.b

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "probability": self.probability,
            "score_a": self.score_a,
            "std_a": self.std_a,
            "score_b": self.score_b,
            "std_b": self.std_b,
            "scale": self.scale.name,
            "gamma": self.gamma,
        }


def scored(result: Any) -> tuple[float, float, Scale]:
    """(score, std, scale) of a score result; a missing std counts as 0. Raises ValueError naming the
    image when it has no score."""
    score = getattr(result, "score", None)
    if score is None:
        why = getattr(result, "error", None) or getattr(result, "note", None) or "no answer could be parsed"
        raise ValueError(f"image {result.image!r} has no score: {why}")
    std = getattr(result, "std", None)
    return float(score), 0.0 if std is None else float(std), getattr(result, "scale", UNIT)


def unit_score(result: Any) -> tuple[float, float]:
    """(μ, σ) of a score result on the native [0, 1] scale, where Eq. 3's γ applies."""
    score, std, scale = scored(result)
    return scale.to_unit(score), scale.spread_to_unit(std)


def _is_result(value: Any) -> bool:
    from aesr1.score import ScoreResult

    return isinstance(value, ScoreResult)


def _check_image(name: str, value: Any) -> None:
    if hasattr(value, "convert"):  # PIL image
        return
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(
            f"{name} must be a ScoreResult, an image path or a PIL image, got {type(value).__name__}"
        )
    path = Path(value).expanduser()
    if path.is_dir():
        raise ValueError(
            f"{name} is the folder {str(path)!r}: compare takes two images (rank takes a folder)"
        )
    if not path.exists():
        raise FileNotFoundError(f"image {str(path)!r} not found")


def compare(a: Any, b: Any, *, scorer: Any = None, gamma: float = DEFAULT_GAMMA) -> Comparison:
    """P(a more aesthetic than b) by Eq. 3, with both images' scores.

    `a` and `b` are `ScoreResult`s, or images (paths or PIL images) that `scorer` (an
    `aesr1.score.Scorer`) scores, both in one batch. Scores on any scale are mapped to the native
    [0, 1] first, so γ means what it means in the rank reward; a result without a std (greedy
    decoding) counts as σ = 0.

    Raises ValueError naming the image when one has no score (unreadable, or no answer parsed),
    TypeError when an image is given without a scorer, FileNotFoundError for a missing path.
    """
    pending = [(name, value) for name, value in (("a", a), ("b", b)) if not _is_result(value)]
    for name, value in pending:
        _check_image(name, value)
    if pending and scorer is None:
        names = [name for name, _ in pending]
        what = f"{names[0]} is an image" if len(names) == 1 else "a and b are images"
        raise TypeError(f"{what}, not a ScoreResult: give scorer= (an aesr1.score.Scorer) to score it")
    results = {"a": a, "b": b}
    if pending:
        fresh = scorer([value for _, value in pending])
        if len(fresh) != len(pending):
            raise ValueError(f"the scorer returned {len(fresh)} results for {len(pending)} images")
        results.update((name, result) for (name, _), result in zip(pending, fresh, strict=True))
    (score_a, std_a, scale_a), (score_b, std_b, scale_b) = scored(results["a"]), scored(results["b"])
    (mu_a, sigma_a), (mu_b, sigma_b) = unit_score(results["a"]), unit_score(results["b"])
    probability = preference_probability(mu_a, sigma_a, mu_b, sigma_b, gamma)
    scale = scale_a
    if scale_a != scale_b:  # report both on the one scale they can share
        scale = UNIT
        score_a, std_a, score_b, std_b = mu_a, sigma_a, mu_b, sigma_b
    return Comparison(
        a=results["a"].image,
        b=results["b"].image,
        probability=probability,
        score_a=score_a,
        std_a=std_a,
        score_b=score_b,
        std_b=std_b,
        scale=scale,
        gamma=float(gamma),
    )


__all__ = ["DEFAULT_GAMMA", "Comparison", "compare", "preference_probability", "scored", "unit_score"]
