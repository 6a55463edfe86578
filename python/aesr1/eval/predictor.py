"""What produces completions for images: a model (batched `generate` with the scoring prompt), or any
callable injected in Python (scripted completions in tests, a remote server, another stack)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any

from aesr1.prompts import SCORING_PROMPT

#: predictor(images, num_samples) -> for each image, `num_samples` completion strings. Images arrive as
#: RGB PIL images, in order; each carries its file path in ``image.info["path"]``.
Predictor = Callable[[Sequence[Any], int], list[list[str]]]


def check_generation(*, temperature: float, top_p: float, max_new_tokens: int, num_samples: int = 1) -> None:
    """Raise ValueError naming the first generation setting out of range (before any model loads)."""
    for name, value in (("num_samples", num_samples), ("max_new_tokens", max_new_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    # NaN passes every comparison below, and would silently decode greedily.
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if temperature == 0 and num_samples > 1:
        raise ValueError(
            "num_samples > 1 needs sampling: set temperature > 0 (greedy decoding repeats one answer)"
        )
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")


def resolve_device(device: str) -> str:
    """ "auto" -> "cuda" when available, else "cpu"; any other name is checked against this machine,
    so a wrong one fails before a model is loaded. Raises ValueError."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"device {device!r} is not a device name (auto, cpu, cuda, cuda:1, ...): {error}"
        ) from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine; use auto or cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine; use auto or cpu")
    return device


class ModelPredictor:
    """Completions from a vision-language model with the paper's scoring prompt (Appendix B).

    `temperature=0` decodes greedily; otherwise samples with `temperature` / `top_p`. Each call is one
    batched `generate`; its seed is derived from `seed` and `key` (the batch's image ids), so a resumed
    evaluation samples a batch the same way whenever it is computed.
    """

    def __init__(
        self,
        model,
        processor,
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_new_tokens: int = 1024,
        seed: int = 0,
        prompt: str = SCORING_PROMPT,
    ):
        check_generation(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        self.model, self.processor = model, processor
        self.temperature, self.top_p = temperature, top_p
        self.max_new_tokens, self.seed, self.prompt = max_new_tokens, seed, prompt
        self.key = ""

    @classmethod
    def from_pretrained(cls, path: str, *, device: str = "auto", dtype: str | None = None, **kwargs):
        """Load a local model directory; the settings, dtype and device are checked first, so a
        wrong one fails in seconds instead of after the weights have loaded."""
        from aesr1.modeling.loading import check_dtype, load_model

        predictor = cls(None, None, **kwargs)
        check_dtype(dtype)
        device = resolve_device(device)
        model, processor = load_model(path, dtype=dtype)
        model.to(device)
        model.eval()
        predictor.model, predictor.processor = model, processor
        return predictor

    def batch_seed(self) -> int:
        digest = hashlib.sha256(f"{self.seed}/{self.key}".encode()).digest()
        return int.from_bytes(digest[:4], "little")

    def __call__(self, images: Sequence[Any], num_samples: int) -> list[list[str]]:
        from aesr1.generation import generate_completions

        sampling = self.temperature > 0
        return generate_completions(
            self.model,
            self.processor,
            images,
            prompt=self.prompt,
            num_samples=num_samples,
            temperature=self.temperature if sampling else 1.0,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            batch_size=max(1, len(images)),
            do_sample=sampling,
            seed=self.batch_seed() if sampling else None,
        )


def check_predictions(completions: Any, n_images: int, num_samples: int) -> list[list[str]]:
    """Validates a predictor's answer: one list of `num_samples` strings per image."""
    if not isinstance(completions, (list, tuple)) or len(completions) != n_images:
        got = len(completions) if isinstance(completions, (list, tuple)) else type(completions).__name__
        raise ValueError(
            f"predictor returned {got} results for {n_images} images; expected one list per image"
        )
    checked = []
    for index, samples in enumerate(completions):
        if isinstance(samples, str):
            samples = [samples]
        if not isinstance(samples, (list, tuple)) or len(samples) != num_samples:
            raise ValueError(
                f"predictor result {index} must hold {num_samples} completion(s), got {samples!r:.80}"
            )
        if not all(isinstance(text, str) for text in samples):
            raise TypeError(f"predictor result {index} must hold strings, got {samples!r:.80}")
        checked.append(list(samples))
    return checked
