"""Batched sampling of scoring completions with `transformers` `generate` (KV cache).

`generate_rollouts` returns token ids and masks in the RL layout of `aesr1.modeling.chat`
(left-padded prompts, right-padded completions); `generate_completions` returns decoded text per image.
The sampling itself lives in `aesr1.rollout` (`generate_rollouts_hf`); this module holds the
settings and result types it shares with the decode engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aesr1.modeling.chat import build_inputs
from aesr1.prompts import SCORING_PROMPT

#: Chat special tokens a policy must never sample (an extra image placeholder breaks the next forward).
NEVER_SAMPLE = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>")


@contextmanager
def suppressed_tokens(model, processor):
    """Temporarily add the vision/chat special tokens to `generation_config.suppress_tokens`."""
    tokenizer = processor.tokenizer
    unk = tokenizer.unk_token_id
    ids = [tokenizer.convert_tokens_to_ids(t) for t in NEVER_SAMPLE]
    ids = [i for i in ids if isinstance(i, int) and i >= 0 and i != unk]
    config = model.generation_config
    before = config.suppress_tokens
    config.suppress_tokens = sorted(set(before or []) | set(ids))
    try:
        yield
    finally:
        config.suppress_tokens = before


@dataclass
class SamplingConfig:
    """Sampling settings.

    Attributes:
        num_samples: completions per image (K of RAPO).
        temperature: softmax temperature; ignored when `do_sample` is False.
        top_p: nucleus sampling mass (1.0 = off).
        top_k: top-k cut (0 = off).
        max_new_tokens: cap on completion length (Appendix C uses 1024).
        do_sample: sample (True) or greedy decode (False).
    """

    num_samples: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 1024
    do_sample: bool = True

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")


@dataclass
class Rollout:
    """Completions sampled for a batch of images, `num_samples` consecutive rows per image.

    `batch` holds the joined prompt+completion tensors (`input_ids`, `attention_mask`, vision inputs,
    `completion_ids`, `completion_mask`, `prompt_length`), `texts` the decoded completions.
    """

    batch: dict[str, Any]
    texts: list[str]
    num_samples: int

    @property
    def completion_ids(self):
        return self.batch["completion_ids"]

    @property
    def completion_mask(self):
        return self.batch["completion_mask"]


def completion_mask_until_eos(completion_ids, eos_token_id: int):
    """1 up to and including the first `eos_token_id` of each row, 0 after it."""
    import torch

    is_eos = completion_ids == eos_token_id
    seen_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    return (seen_before == 0).long()


def repeated_prompt_batch(
    model, processor, images: Sequence[Any], num_samples: int, prompt: str | Sequence[str]
) -> dict[str, Any]:
    """The chat prompt batch with each image (and its prompt) repeated `num_samples` times, on the
    model's device; `prompt` is one prompt for all images or one per image."""
    repeated = [image for image in images for _ in range(num_samples)]
    if not isinstance(prompt, str):
        if len(prompt) != len(images):
            raise ValueError(f"prompt has {len(prompt)} entries but images has {len(images)}")
        prompt = [row for row in prompt for _ in range(num_samples)]
    prompt_batch = build_inputs(processor, repeated, prompt)
    device = next(model.parameters()).device
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in prompt_batch.items()}


def generate_rollouts(
    model,
    processor,
    images: Sequence[Any],
    sampling: SamplingConfig | None = None,
    *,
    prompt: str | Sequence[str] = SCORING_PROMPT,
    seed: int | None = None,
) -> Rollout:
    """Sample `sampling.num_samples` completions per image in one transformers `generate` call;
    `prompt` is one prompt for all images or one per image.

    This is `aesr1.rollout.generate_rollouts_hf`, so `rollout.batch` also holds the sampling
    log-probs (`sampling_logprobs`).
    """
    # imported here: aesr1.rollout imports this module
    from aesr1.rollout.api import generate_rollouts_hf

    return generate_rollouts_hf(model, processor, images, sampling, prompt=prompt, seed=seed)


def generate_completions(
    model,
    processor,
    images: Sequence[Any],
    *,
    prompt: str | Sequence[str] = SCORING_PROMPT,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 1024,
    batch_size: int = 8,
    do_sample: bool = True,
    seed: int | None = None,
    progress: bool = False,
) -> list[list[str]]:
    """Decoded completions: for each image, a list of `num_samples` strings.

    `prompt` is one prompt for all images or one per image. Images are processed `batch_size` at a time; with `seed`, batch b uses seed `seed + b` so results
    do not depend on what ran before.
    """
    from aesr1.rollout.api import generate_rollouts_hf

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not isinstance(prompt, str) and len(prompt) != len(images):
        raise ValueError(f"prompt has {len(prompt)} entries but images has {len(images)}")
    sampling = SamplingConfig(num_samples, temperature, top_p, top_k, max_new_tokens, do_sample)
    starts = range(0, len(images), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="generate", unit="batch")
    results: list[list[str]] = []
    for number, start in enumerate(starts):
        chunk = images[start : start + batch_size]
        chunk_prompt = prompt if isinstance(prompt, str) else prompt[start : start + batch_size]
        rollout = generate_rollouts_hf(
            model,
            processor,
            chunk,
            sampling,
            prompt=chunk_prompt,
            seed=None if seed is None else seed + number,
        )
        for index in range(len(chunk)):
            results.append(rollout.texts[index * num_samples : (index + 1) * num_samples])
    return results
