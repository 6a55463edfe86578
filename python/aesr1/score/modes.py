"""Score modes: how an image's score is read from a model.

- ``greedy``: one greedy completion; its parsed answer is the score.
- ``sample``: n completions sampled at temperature T (defaults: the RAPO rollout settings,
  `RAPOConfig.num_generations` and `RAPOConfig.temperature`); the score is their mean, reported with
  their standard deviation, median and the number of unparseable samples. Each image's samples are
  drawn with a seed derived from the run's seed and the image's pixels (`image_key`), so an image
  gets the same samples whichever images it is scored with and in whatever order.
- ``expected``: one greedy critique, then the exact expectation of the answer over the model's
  digit probabilities (`aesr1.score.expected`); the standard deviation of that distribution is the
  uncertainty.

`greedy` and `expected` process each image independently of the others in its batch (greedy
decoding per row; the digit tree per image), so batch size, batch composition and padding do not
change an image's result beyond floating-point rounding of padded batched matmuls.

Scores here are on the native [0, 1] scale; `aesr1.score.scales.Scale` maps them for output.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aesr1.eval.aggregate import mean_scores
from aesr1.eval.predictor import Predictor, check_generation, check_predictions

SCORE_MODES = ("greedy", "sample", "expected")


def _rapo_sampling() -> tuple[int, float, float]:
    from aesr1.train.config import RAPOConfig

    defaults = RAPOConfig()
    return defaults.num_generations, defaults.temperature, defaults.top_p


@dataclass(frozen=True)
class ModeSettings:
    """A score mode with its generation settings, checked and with defaults filled in.

    Attributes:
        mode: "greedy", "sample" or "expected".
        num_samples: completions per image (1 unless sampling).
        temperature: 0 for greedy and expected; > 0 for sample.
        top_p: nucleus mass when sampling.
        max_new_tokens: completion length cap (Appendix C: 1024).
        seed: run seed; with the image's pixels it gives each image's sampling seed.
    """

    mode: str
    num_samples: int
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int

    @classmethod
    def resolve(
        cls,
        mode: str | None = None,
        *,
        num_samples: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int = 1024,
        seed: int = 0,
        preset: Any = None,
    ) -> ModeSettings:
        """Fill in a mode's defaults and reject settings that contradict it (ValueError).

        Without `mode`, settings that sample (temperature > 0 or num_samples > 1) mean "sample",
        else "greedy". "sample" takes `RAPOConfig.num_generations` samples at the `preset`'s
        temperature and top_p (the released inference settings; for "aesr1" the RAPO rollout's),
        or at the RAPO rollout's without a preset.
        """
        if mode is None:
            samples = (temperature or 0) > 0 or (num_samples or 1) > 1
            mode = "sample" if samples else "greedy"
        if mode not in SCORE_MODES:
            raise ValueError(f"mode must be one of {', '.join(SCORE_MODES)}, got {mode!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if mode == "sample":
            default_n, default_t, default_p = _rapo_sampling()
            if preset is not None:
                default_t, default_p = preset.temperature, preset.top_p
            num_samples = default_n if num_samples is None else num_samples
            temperature = default_t if temperature is None else temperature
            top_p = default_p if top_p is None else top_p
            if temperature == 0:
                raise ValueError(
                    "mode 'sample' needs temperature > 0 (0 decodes greedily: use mode 'greedy')"
                )
        else:
            if num_samples not in (None, 1):
                raise ValueError(
                    f"mode {mode!r} reads one greedy completion per image: num_samples must be 1, "
                    f"got {num_samples!r} (use mode 'sample' for several)"
                )
            if temperature not in (None, 0, 0.0):
                raise ValueError(
                    f"mode {mode!r} decodes greedily: temperature must be 0, got {temperature!r} "
                    "(use mode 'sample' to sample)"
                )
            num_samples, temperature = 1, 0.0
            top_p = 1.0 if top_p is None else top_p
        check_generation(
            temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, num_samples=num_samples
        )
        return cls(mode, num_samples, float(temperature), float(top_p), max_new_tokens, seed)


def image_key(image: Any) -> str:
    """A short hash of an RGB image's size and pixels: the per-image part of a sampling seed."""
    digest = hashlib.sha256(f"{image.mode}/{image.size[0]}x{image.size[1]}/".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()[:16]


def sample_stats(scores: Sequence[float | None]) -> tuple[float | None, float | None, float | None]:
    """(mean, std, median) of the parsed scores, None for each when none parsed.

    The mean is summed left to right like `aesr1.eval.aggregate.mean_scores`, so `score` and the
    evaluation's prediction are the same float. std is the population standard deviation
    (ddof 0: the spread of the answers the model gave, 0 for a single answer), the same
    definition as the expected mode's std of its answer distribution.
    """
    parsed = [float(value) for value in scores if value is not None and not math.isnan(value)]
    if not parsed:
        return None, None, None
    mean = float(mean_scores(np.array([parsed], dtype=np.float64))[0])
    values = np.array(parsed, dtype=np.float64)
    std = float(np.sqrt(np.mean((values - values.mean()) ** 2)))
    return mean, std, float(np.median(values))


@dataclass
class ImagePrediction:
    """One image's prediction on the native [0, 1] scale.

    Attributes:
        completions: the completions generated for the image.
        scores: each completion's parsed answer on [0, 1] (None = unparseable).
        score: the mode's score: the greedy answer, the mean of the samples or the expectation.
        std: spread: std of the samples, or of the expected mode's answer distribution; None for
            greedy (one answer says nothing about its uncertainty).
        median: median of the parsed samples (sample mode).
        distribution: expected mode: answer string (on the preset's scale) -> probability.
        note: why `score` is None when it is.
    """

    completions: list[str]
    scores: list[float | None]
    score: float | None
    std: float | None = None
    median: float | None = None
    distribution: dict[str, float] | None = None
    note: str | None = None

    @property
    def parse_failures(self) -> int:
        return sum(score is None for score in self.scores)


class ModeRunner:
    """Predictions of one mode for batches of images.

    Args:
        settings: the mode and its generation settings.
        predictor: `(images, num_samples) -> completions`; a `ModelPredictor` or any callable. When it
            has a writable `key`, it is set to the image's key before that image's samples are drawn
            (per-image seeds in sample mode).
        preset: prompt, parser and answer scale (`aesr1.score.presets`).
        model, processor: needed by the expected mode to read digit probabilities.
    """

    def __init__(self, settings: ModeSettings, predictor: Predictor, preset: Any, model=None, processor=None):
        if settings.mode == "expected" and (model is None or processor is None):
            raise ValueError(
                "mode 'expected' reads the model's digit probabilities: give a model (a scripted "
                "predictor has none)"
            )
        self.settings, self.predictor, self.preset = settings, predictor, preset
        self.model, self.processor = model, processor

    def _unit(self, values: Sequence[float | None]) -> list[float | None]:
        scale = self.preset.scale
        return [None if v is None or math.isnan(v) else (v - scale.lo) / scale.width for v in values]

    def _generate(self, images: Sequence[Any], num_samples: int) -> list[list[str]]:
        return check_predictions(self.predictor(images, num_samples), len(images), num_samples)

    def __call__(self, images: Sequence[Any], keys: Sequence[str]) -> list[ImagePrediction]:
        """Predictions for `images` (RGB PIL images) with their `image_key`s, in order."""
        if len(images) != len(keys):
            raise ValueError(f"{len(images)} images but {len(keys)} keys")
        if not images:
            return []
        mode = self.settings.mode
        if mode == "sample":
            return [self._sample(image, key) for image, key in zip(images, keys, strict=True)]
        completions = self._generate(images, 1)
        if mode == "greedy":
            out = []
            for samples in completions:
                scores = self._unit(self.preset.parse_many(samples))
                note = None if scores[0] is not None else "the answer did not parse"
                out.append(ImagePrediction(samples, scores, scores[0], note=note))
            return out
        return self._expected(images, completions)

    def _sample(self, image: Any, key: str) -> ImagePrediction:
        if hasattr(self.predictor, "key"):
            self.predictor.key = f"image/{key}"
        samples = self._generate([image], self.settings.num_samples)[0]
        scores = self._unit(self.preset.parse_many(samples))
        mean, std, median = sample_stats(scores)
        note = None if mean is not None else "no sampled answer parsed"
        return ImagePrediction(samples, scores, mean, std, median, note=note)

    def _expected(self, images: Sequence[Any], completions: list[list[str]]) -> list[ImagePrediction]:
        from aesr1.score.expected import expected_scores

        scale, preset = self.preset.scale, self.preset
        read = expected_scores(
            self.model, self.processor, images, [samples[0] for samples in completions],
            prompt=preset.prompt, lo=scale.lo, hi=scale.hi, decimals=preset.decimals,
        )  # fmt: skip
        out = []
        for samples, expected in zip(completions, read, strict=True):
            scores = self._unit(preset.parse_many(samples))
            score = None if expected.score is None else (expected.score - scale.lo) / scale.width
            std = None if expected.std is None else expected.std / scale.width
            out.append(
                ImagePrediction(samples, scores, score, std, None, expected.distribution, expected.reason)
            )
        return out


__all__ = ["SCORE_MODES", "ImagePrediction", "ModeRunner", "ModeSettings", "image_key", "sample_stats"]
