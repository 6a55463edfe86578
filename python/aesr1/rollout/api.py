"""`generate_rollouts`: completions sampled per image, by the decode engine or transformers `generate`.

The result is a `Rollout` (joined prompt + completion batch in the RL layout, decoded texts,
`num_samples`) with `rollout.batch["sampling_logprobs"]` [rows, W] fp32: the log-prob of
each completion token under the distribution it was drawn from (0 on padding), obtained without an
extra forward. See `aesr1.rollout.sampling` for which distribution that is exactly.

`engine` picks the implementation: "engine" (`DecodeEngine`, any device), "generate" (transformers
`generate`, with the sampling log-probs recorded by a logits processor) or "auto" (default): the
engine on CUDA, `generate` on CPU, and `generate` with a warning when the model or its generation
config uses something the engine does not implement (`engine_blockers`).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from aesr1.generation import Rollout, SamplingConfig, completion_mask_until_eos, repeated_prompt_batch
from aesr1.modeling.chat import END_OF_TURN, join_completions, model_inputs
from aesr1.prompts import SCORING_PROMPT
from aesr1.rollout.engine import DecodeEngine, EngineOptions, supports_model
from aesr1.rollout.sampling import SamplingParams, process_logits

ENGINE_CHOICES = ("auto", "engine", "generate")

#: generation_config settings that `generate` would apply and the engine does not reproduce, with
#: the value at which each is inactive.
_UNSUPPORTED_GENERATION = {
    "no_repeat_ngram_size": (None, 0),
    "encoder_repetition_penalty": (None, 1.0),
    "bad_words_ids": (None,),
    "sequence_bias": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "begin_suppress_tokens": (None,),
    "exponential_decay_length_penalty": (None,),
    "min_p": (None, 0.0),
    "typical_p": (None, 1.0),
    "epsilon_cutoff": (None, 0.0),
    "eta_cutoff": (None, 0.0),
    "top_h": (None,),
    "guidance_scale": (None, 1.0),
    "renormalize_logits": (None, False),
    "remove_invalid_values": (None, False),
    "watermarking_config": (None,),
    "num_beams": (None, 1),
}

_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def sampling_params(sampling: SamplingConfig, generation_config=None) -> SamplingParams:
    """The engine's settings for `sampling`, with the repetition penalty and suppressed tokens of
    `generation_config` that `generate` would apply too."""
    penalty = getattr(generation_config, "repetition_penalty", None) or 1.0
    suppress = tuple(sorted({int(t) for t in (getattr(generation_config, "suppress_tokens", None) or [])}))
    if not sampling.do_sample:
        return SamplingParams(do_sample=False, repetition_penalty=penalty, suppress_tokens=suppress)
    return SamplingParams(
        do_sample=True,
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        repetition_penalty=penalty,
        suppress_tokens=suppress,
    )


def engine_blockers(model) -> list[str]:
    """Why the engine cannot reproduce `generate` for `model` (empty list: it can)."""
    reasons = []
    reason = supports_model(model)
    if reason is not None:
        reasons.append(reason)
    config = getattr(model, "generation_config", None)
    for name, inactive in _UNSUPPORTED_GENERATION.items():
        value = getattr(config, name, None)
        if value not in inactive:
            reasons.append(f"generation_config.{name}={value!r}")
    return reasons


def engine_for(model, options: EngineOptions | None = None) -> DecodeEngine:
    """The cached engine of `model` (one per model object, so its buffers and graphs are reused);
    a different `options` replaces it."""
    engine = _ENGINES.get(model)
    if engine is None or (options is not None and engine.options != options):
        # weak: a strong reference from the value would keep the dictionary's key alive forever
        engine = DecodeEngine(model, options, weak=True)
        _ENGINES[model] = engine
    return engine


def release_engines() -> None:
    """Free the buffers and CUDA graphs of every cached engine (they are rebuilt on the next call)."""
    for engine in list(_ENGINES.values()):
        engine.release()


def resolve_engine(engine: str, model) -> str:
    """ "engine" or "generate" for the `engine` argument (see the module docstring)."""
    if engine not in ENGINE_CHOICES:
        raise ValueError(f"engine must be one of {ENGINE_CHOICES}, got {engine!r}")
    if engine == "generate":
        return "generate"
    blockers = engine_blockers(model)
    if engine == "engine":
        if blockers:
            raise ValueError("engine='engine' cannot reproduce generate here: " + "; ".join(blockers))
        return "engine"
    if next(model.parameters()).device.type != "cuda":
        return "generate"
    if blockers:
        warnings.warn("rollouts fall back to generate: " + "; ".join(blockers), stacklevel=3)
        return "generate"
    return "engine"


def _prompt_batch(model, processor, images, sampling: SamplingConfig, prompt) -> dict[str, Any]:
    return repeated_prompt_batch(model, processor, images, sampling.num_samples, prompt)


def _rollout(processor, prompt_batch, completion_ids, completion_mask, logprobs, num_samples) -> Rollout:
    texts = processor.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    batch = join_completions(prompt_batch, completion_ids, completion_mask)
    batch["sampling_logprobs"] = logprobs.float()
    return Rollout(batch=batch, texts=texts, num_samples=num_samples)


def generate_rollouts(
    model,
    processor,
    images: Sequence[Any],
    sampling: SamplingConfig | None = None,
    *,
    prompt: str | Sequence[str] = SCORING_PROMPT,
    seed: int | None = None,
    engine: str = "auto",
    options: EngineOptions | None = None,
) -> Rollout:
    """Sample `sampling.num_samples` completions per image; `prompt` is one prompt or one per image.

    See the module docstring for `engine` and `sampling_logprobs`; `options` configures the engine
    (cached per model).
    """
    sampling = sampling or SamplingConfig()
    if not isinstance(sampling, SamplingConfig):
        raise TypeError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
    if len(images) == 0:
        raise ValueError("images must not be empty")
    choice = resolve_engine(engine, model)
    if choice == "generate":
        return generate_rollouts_hf(model, processor, images, sampling, prompt=prompt, seed=seed)
    prompt_batch = _prompt_batch(model, processor, images, sampling, prompt)
    tokenizer = processor.tokenizer
    result = engine_for(model, options).decode(
        prompt_batch,
        sampling_params(sampling, model.generation_config),
        max_new_tokens=sampling.max_new_tokens,
        eos_token_id=tokenizer.convert_tokens_to_ids(END_OF_TURN),
        pad_token_id=tokenizer.pad_token_id,
        seed=seed,
    )
    return _rollout(processor, prompt_batch, result.completion_ids, result.completion_mask,
                    result.sampling_logprobs, sampling.num_samples)  # fmt: skip


class SampledDistributionRecorder(LogitsProcessor):
    """A `generate` logits processor that applies temperature, top-k and top-p itself (after the
    processors `generate` runs first: repetition penalty, suppressed tokens) and records the
    log-prob of each chosen token under the resulting distribution, with O(rows x vocab) memory.

    Call k sees the token chosen at call k-1 as `input_ids[:, -1]`; `finish` adds the last one.
    """

    def __init__(self, params: SamplingParams):
        self.params = SamplingParams(
            do_sample=params.do_sample, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p
        )
        self.logprobs: list[torch.Tensor] = []
        self._pending: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._pending is not None:
            self.logprobs.append(self._pending.gather(-1, input_ids[:, -1:]).squeeze(-1))
        processed = process_logits(scores, self.params)
        self._pending = torch.log_softmax(processed, dim=-1)
        return processed

    def finish(self, completion_ids: torch.Tensor) -> torch.Tensor:
        """[rows, W] log-probs of `completion_ids` (the W generated columns)."""
        width = completion_ids.shape[1]
        if len(self.logprobs) < width and self._pending is not None:
            column = completion_ids[:, len(self.logprobs) : len(self.logprobs) + 1]
            self.logprobs.append(self._pending.gather(-1, column).squeeze(-1))
        self._pending = None
        return torch.stack(self.logprobs[:width], dim=1)


def generate_rollouts_hf(
    model,
    processor,
    images: Sequence[Any],
    sampling: SamplingConfig | None = None,
    *,
    prompt: str | Sequence[str] = SCORING_PROMPT,
    seed: int | None = None,
) -> Rollout:
    """`sampling.num_samples` completions per image from one transformers `generate` call, with
    their `sampling_logprobs` (see `SampledDistributionRecorder`); `prompt` is one prompt or one per
    image. Also `aesr1.generation.generate_rollouts`."""
    sampling = sampling or SamplingConfig()
    prompt_batch = _prompt_batch(model, processor, images, sampling, prompt)
    device = next(model.parameters()).device
    tokenizer = processor.tokenizer
    eos_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    recorder = SampledDistributionRecorder(sampling_params(sampling, model.generation_config))
    # neutral warpers: the recorder applies temperature/top-k/top-p so that it sees their result;
    # greedy decoding has none (generate warns about warper settings it would ignore)
    neutral = (1.0, 1.0, 0) if sampling.do_sample else (None, None, None)
    kwargs = dict(
        max_new_tokens=sampling.max_new_tokens, do_sample=sampling.do_sample, eos_token_id=eos_id,
        pad_token_id=tokenizer.pad_token_id, temperature=neutral[0], top_p=neutral[1], top_k=neutral[2],
        logits_processor=LogitsProcessorList([recorder]),
    )  # fmt: skip
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad():
            output = model.generate(**model_inputs(prompt_batch), **kwargs)
    prompt_length = prompt_batch["input_ids"].shape[1]
    completion_ids = output[:, prompt_length:]
    logprobs = recorder.finish(completion_ids)
    completion_mask = completion_mask_until_eos(completion_ids, eos_id)
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    logprobs = logprobs.masked_fill(completion_mask == 0, 0.0)
    return _rollout(processor, prompt_batch, completion_ids, completion_mask, logprobs, sampling.num_samples)
