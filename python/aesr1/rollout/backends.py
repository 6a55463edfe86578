"""The rollout backend switch: our engine (default), plain `generate`, or vLLM.

`make_rollout_fn(RolloutConfig(...))` returns a function with the signature and result of
`aesr1.rollout.generate_rollouts_hf` (a `Rollout` whose batch holds `sampling_logprobs`):

    rollout_fn(model, processor, images, sampling, *, prompt=..., seed=None) -> Rollout

- "engine": `aesr1.rollout.generate_rollouts(engine="auto")`: the static-cache decode engine with
  CUDA graphs on CUDA, plain `generate` on CPU or when the engine cannot reproduce `generate`;
- "generate": always transformers `generate` (what trl uses by default);
- "vllm": trl's `VLLMGeneration` (colocated in this process, or a `trl vllm-serve` server), which
  syncs the policy weights into vLLM before each call. vLLM is imported only here, and a clear error
  says how to install it when it is missing. Not exercised by the test suite (vLLM needs a GPU).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

import torch

from aesr1.generation import Rollout, SamplingConfig, completion_mask_until_eos
from aesr1.modeling.chat import END_OF_TURN, load_images
from aesr1.prompts import SCORING_PROMPT
from aesr1.rollout.api import _prompt_batch, _rollout, generate_rollouts
from aesr1.rollout.config import RolloutConfig

RolloutFn = Callable[..., Rollout]


def require_vllm() -> None:
    """Raise an ImportError that says how to get vLLM when it is not installed."""
    if importlib.util.find_spec("vllm") is None:
        raise ImportError(
            "the rollout backend 'vllm' needs vLLM, which is not installed: `pip install 'trl[vllm]'` "
            "(a vLLM version your trl supports), or use the backend 'engine' (the default)"
        )


def make_rollout_fn(
    config: RolloutConfig | None = None,
    *,
    model=None,
    processor=None,
    accelerator=None,
    sampling: SamplingConfig | None = None,
) -> RolloutFn:
    """The rollout function of `config.backend`. vLLM needs `model`, `processor`,
    `accelerator` and the `sampling` settings at construction (it starts its own engine)."""
    config = config or RolloutConfig()
    if config.backend == "engine":
        return functools.partial(generate_rollouts, engine="auto", options=config.engine)
    if config.backend == "generate":
        return functools.partial(generate_rollouts, engine="generate")
    require_vllm()
    missing = [name for name, value in (("model", model), ("processor", processor),
                                        ("accelerator", accelerator), ("sampling", sampling)) if value is None]  # fmt: skip
    if missing:
        raise ValueError(f"the rollout backend 'vllm' needs {', '.join(missing)} to start vLLM")
    return VLLMRollouts(config, model, processor, accelerator, sampling)


class VLLMRollouts:
    """Rollouts from vLLM through trl's `VLLMGeneration` (weights synced before every call).

    Sampling log-probs are vLLM's "processed_logprobs" (trl's setting: after temperature and
    filters), the same definition as the engine's. vLLM seeds its samplers once at start-up, so
    `seed` is not honoured per call (a resumed run does not resample the same completions).
    """

    def __init__(self, config: RolloutConfig, model, processor, accelerator, sampling: SamplingConfig):
        require_vllm()
        from trl.generation.vllm_generation import VLLMGeneration

        self.processor = processor
        eos_id = processor.tokenizer.convert_tokens_to_ids(END_OF_TURN)
        kwargs = dict(config.vllm_kwargs)
        generation_kwargs = {"stop_token_ids": [eos_id], **kwargs.pop("generation_kwargs", {})}
        self.generation = VLLMGeneration(
            model, accelerator, processor, mode=config.vllm_mode,
            server_base_url=config.vllm_server_base_url,
            gpu_memory_utilization=config.vllm_gpu_memory_utilization,
            temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
            max_completion_length=sampling.max_new_tokens, logprobs=0,
            generation_kwargs=generation_kwargs, **kwargs,
        )  # fmt: skip

    def __call__(
        self,
        model,
        processor,
        images: Sequence[Any],
        sampling: SamplingConfig | None = None,
        *,
        prompt: str | Sequence[str] = SCORING_PROMPT,
        seed: int | None = None,
    ) -> Rollout:
        sampling = sampling or SamplingConfig()
        if not sampling.do_sample:
            raise ValueError("the vLLM backend samples; use the backend 'engine' for greedy decoding")
        generation = self.generation
        generation.temperature, generation.top_p, generation.top_k = (
            sampling.temperature,
            sampling.top_p,
            sampling.top_k,
        )
        generation.max_completion_length = sampling.max_new_tokens
        generation.sync_weights()
        prompt_batch = _prompt_batch(model, processor, images, sampling, prompt)
        ids, mask = prompt_batch["input_ids"].cpu(), prompt_batch["attention_mask"].cpu()
        prompts = [row[keep.bool()].tolist() for row, keep in zip(ids, mask, strict=True)]
        opened = load_images([image for image in images for _ in range(sampling.num_samples)])
        _, completions, logprobs, _ = generation.generate(
            prompts, [[image] for image in opened], sampling.num_samples
        )
        tokenizer = processor.tokenizer
        width = max([1, *(len(c) for c in completions)])
        device = prompt_batch["input_ids"].device
        completion_ids = torch.full((len(completions), width), tokenizer.pad_token_id, dtype=torch.long)
        sampled = torch.zeros((len(completions), width), dtype=torch.float32)
        for row, tokens in enumerate(completions):
            completion_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            if logprobs is not None:
                values = [step[0] if step and step[0] is not None else 0.0 for step in logprobs[row]]
                sampled[row, : len(values)] = torch.tensor(values, dtype=torch.float32)
        eos_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
        completion_mask = completion_mask_until_eos(completion_ids, eos_id)
        lengths = torch.tensor([len(c) for c in completions]).unsqueeze(1)
        completion_mask = completion_mask * (torch.arange(width).unsqueeze(0) < lengths).long()
        completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
        sampled = sampled.masked_fill(completion_mask == 0, 0.0)
        return _rollout(processor, prompt_batch, completion_ids.to(device), completion_mask.to(device),
                        sampled.to(device), sampling.num_samples)  # fmt: skip
