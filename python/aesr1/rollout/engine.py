"""The decode engine: prefill with `transformers`, then fixed-shape decode steps over a static KV cache.

One call (`DecodeEngine.decode`):

1. prefill: one forward of the whole model on the left-padded prompt batch (vision tower, image
   features scattered into the text embeddings, Qwen2.5-VL's multimodal rotary positions computed
   as `generate` does, `aesr1.rollout.positions`), with a transformers `DynamicCache`; its keys and
   values are copied into the static buffers (`aesr1.rollout.state`), and the first token is chosen
   from the last prompt position's logits;
2. decode: each step is one forward of the model for a whole bucket of rows (a batch size among
   `rows, 2^k, ..., 1`) with fixed shapes: one token per row, its 4 rotary positions, the boolean
   attention mask over the KV capacity, and a cache whose `update` writes one column in place. The
   logits are processed, a token chosen and its log-prob recorded on the device
   (`aesr1.rollout.sampling`); rows that produced EOS continue as padding;
3. every `check_every` steps the host reads which rows are unfinished: it stops when none is left
   and, when they fit a smaller bucket, compacts them to the front of the buffers so finished rows
   no longer cost work.

On CUDA each bucket's step is captured once as a CUDA graph (after `warmup_steps` eager runs of it,
which are real decode steps) and replayed; the graphs read the model's parameters in place, so an
optimiser step is seen by the next call without a copy. If a parameter's storage changed (a new
tensor was assigned, ZeRO-3 gathered parameters anew, `.to()`), the graphs are captured again.
On CPU the same step runs eagerly, which is how the tests check it.

Supported models: transformers 5 decoder models whose forward takes a KV cache (`past_key_values` in
transformers 5.17, `cache` in later releases; `cache_keyword` finds which), `position_ids` and a
dict of 4-D attention masks (Qwen2.5-VL and the Qwen2 family) with "sdpa" or "eager" attention and
no sliding-window layers. `supports_model` says why not otherwise.
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from aesr1.generation import completion_mask_until_eos
from aesr1.rollout.config import EngineOptions
from aesr1.rollout.positions import prompt_position_ids
from aesr1.rollout.sampling import SamplingParams, choose_tokens, process_logits, suppress_mask
from aesr1.rollout.state import DecodeState, StateShape

#: Keys of a prompt batch the prefill forward takes (the rest, e.g. labels, is ignored).
PREFILL_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids",
                "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")  # fmt: skip
SUPPORTED_ATTENTION = ("sdpa", "eager")
#: Names transformers has given the forward's KV-cache argument, newest first.
CACHE_KEYWORDS = ("cache", "past_key_values")


@dataclass
class DecodeResult:
    """Completions of one call, right-padded to the longest (`W` columns, as `generate` returns).

    `completion_ids` [n, W] (pad after the first EOS), `completion_mask` [n, W] (1 up to and
    including the first EOS), `sampling_logprobs` [n, W] fp32 (log-prob of each chosen token under
    the distribution it was drawn from, see `aesr1.rollout.sampling`; 0 where the mask is 0).
    `stats`: timings and the work done.
    """

    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    sampling_logprobs: torch.Tensor
    stats: dict[str, Any] = field(default_factory=dict)


def bucket_sizes(rows: int, min_bucket: int = 1) -> list[int]:
    """Descending batch buckets: `rows`, then the powers of two below it down to `min_bucket`."""
    sizes = [rows]
    size = 1 << (max(rows - 1, 1).bit_length() - 1)
    while size >= min_bucket and size > 0:
        if size < rows:
            sizes.append(size)
        size //= 2
    return sizes


def smallest_bucket(buckets: list[int], count: int) -> int:
    """The smallest bucket holding `count` rows (`buckets` descending, `buckets[0] >= count`)."""
    return min(b for b in buckets if b >= count)


def _forward_parameters(model):
    # PEFT wrappers forward **kwargs to the model they wrap: inspect that one
    inner = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    try:
        return inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return None


def cache_keyword(model) -> str | None:
    """The name under which `model`'s forward takes its KV cache (`CACHE_KEYWORDS`), or None."""
    parameters = _forward_parameters(model) or {}
    return next((name for name in CACHE_KEYWORDS if name in parameters), None)


def supports_model(model) -> str | None:
    """None when the engine can run `model`, else the reason it cannot."""
    parameters = _forward_parameters(model)
    if parameters is None:
        return "the model's forward has no inspectable signature"
    if cache_keyword(model) is None:
        return (
            f"the model's forward takes none of {CACHE_KEYWORDS} as its KV cache "
            "(transformers >= 5 models are supported)"
        )
    for name in ("position_ids", "logits_to_keep"):
        if name not in parameters:
            return f"the model's forward takes no {name!r} argument (transformers >= 5 models are supported)"
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    attention = getattr(config, "_attn_implementation", None) or "eager"
    if attention not in SUPPORTED_ATTENTION:
        return f"attention implementation {attention!r} is not one of {SUPPORTED_ATTENTION}"
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if layer_types != {"full_attention"}:
        return f"layer types {sorted(layer_types)} (only full attention is supported)"
    rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if "dynamic" in str(rope_type) or rope_type == "longrope":
        # these recompute their frequencies from max(position_ids) on the host at every forward
        return f"rope_type {rope_type!r} synchronises with the host at every step"
    return None


def _prefill_kv(output) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    cache = getattr(output, "cache", None)
    if cache is None:
        cache = getattr(output, "past_key_values", None)
    if cache is None or not hasattr(cache, "layers"):
        raise RuntimeError("the prefill forward returned no transformers Cache with per-layer keys/values")
    return [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]


def _parameter_fingerprint(model) -> tuple:
    """Storage addresses, dtypes and the train flag: what a captured graph has baked in."""
    tensors = [*model.parameters(), *model.buffers()]
    return (model.training, tuple((t.data_ptr(), t.dtype) for t in tensors))


class DecodeEngine:
    """Static-cache decode for one model (held by reference: it always runs the current weights;
    `weak=True` holds it by weak reference).

    Keep one engine per model across calls: its buffers and CUDA graphs are reused while the batch
    fits the buffers (rows, KV capacity), `max_new_tokens` and the sampling settings are unchanged.
    """

    def __init__(self, model, options: EngineOptions | None = None, *, weak: bool = False):
        reason = supports_model(model)
        if reason is not None:
            raise ValueError(f"model not supported by the decode engine: {reason}")
        # weak: the engine does not keep the model alive (engines cached per model use this)
        self._model_ref = weakref.ref(model) if weak else None
        self._model = None if weak else model
        self.options = options or EngineOptions()
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self._attention = getattr(config, "_attn_implementation", None) or "eager"
        self._cache_keyword = cache_keyword(model)
        self._state: DecodeState | None = None
        self._params: SamplingParams | None = None
        self._suppressed: torch.Tensor | None = None
        self._eos_pad: tuple[int, int] | None = None
        self._generator: torch.Generator | None = None
        self._graphs: dict[int, Any] = {}
        self._eager_runs: dict[int, int] = {}
        self._graph_pool = None
        self._capture_failed = False
        self._fingerprint: tuple | None = None
        self._forward = torch.compile(self._model_forward, dynamic=False) if self.options.compile else None

    # -------------------------------------------------------------------------------------------
    # public

    @property
    def model(self):
        model = self._model if self._model is not None else self._model_ref()
        if model is None:
            raise RuntimeError("the engine's model was garbage-collected")
        return model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def release(self) -> None:
        """Free the KV buffers and graphs (e.g. to give their memory to the optimiser step); the next
        call allocates and captures again."""
        self._drop_graphs()
        self._state = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @torch.no_grad()
    def decode(
        self,
        prompt_batch: dict[str, Any],
        params: SamplingParams,
        *,
        max_new_tokens: int,
        eos_token_id: int,
        pad_token_id: int,
        seed: int | None = None,
    ) -> DecodeResult:
        """Complete every row of `prompt_batch` (left-padded `input_ids`, `attention_mask` and the
        vision inputs of `aesr1.modeling.chat.build_inputs`), on the model's device."""
        input_ids, attention_mask = self._check_batch(prompt_batch, max_new_tokens)
        device = self.device
        rows, prompt_length = input_ids.shape
        stats: dict[str, Any] = {"rows": rows, "prompt_length": prompt_length}
        started = time.perf_counter()

        batch = {
            k: v.to(device) if hasattr(v, "to") else v for k, v in prompt_batch.items() if k in PREFILL_KEYS
        }
        positions = prompt_position_ids(self.model, batch)
        output = self.model(**batch, position_ids=positions, use_cache=True, logits_to_keep=1)
        keys, values = _prefill_kv(output)
        logits = output.logits[:, -1]
        del output

        vocab_size = logits.shape[-1]
        needed = StateShape(
            rows=rows,
            capacity=math.ceil((prompt_length + max_new_tokens - 1) / self.options.kv_block)
            * self.options.kv_block,
            max_new_tokens=max_new_tokens,
            num_layers=len(keys),
            kv_heads=keys[0].shape[1],
            head_dim=keys[0].shape[3],
            vocab_size=vocab_size,
            kv_dtype=keys[0].dtype,
            device=device,
            with_seen=params.uses_penalty,
        )
        state = self._prepare(needed, params, eos_token_id, pad_token_id, device)
        seen = None
        if params.uses_penalty:
            ids = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, vocab_size)
            seen = torch.zeros(rows, vocab_size + 1, dtype=torch.bool, device=device)
            seen.scatter_(1, ids, True)
            seen = seen[:, :vocab_size]
        state.load_prompt(keys, values, batch["attention_mask"], positions[:, :, -1], pad_token_id, seen)
        del keys, values
        self._seed(seed, device)
        self._record(state, logits, rows)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stats["prefill_s"] = time.perf_counter() - started

        steps, compactions, buckets_used = self._decode_loop(state, rows, max_new_tokens)
        tokens = state.tokens[:rows, :steps].clone()
        logprobs = state.logprobs[:rows, :steps].clone()
        mask = completion_mask_until_eos(tokens, eos_token_id)
        width = max(int(mask.sum(dim=1).max()), 1)
        tokens, logprobs, mask = tokens[:, :width], logprobs[:, :width], mask[:, :width]
        tokens = tokens.masked_fill(mask == 0, pad_token_id)
        logprobs = logprobs.masked_fill(mask == 0, 0.0)
        stats.update(
            total_s=time.perf_counter() - started,
            decode_steps=steps - 1,
            compactions=compactions,
            buckets=buckets_used,
            cuda_graphs=bool(self._graphs),
            new_tokens=int(mask.sum()),
        )
        stats["decode_s"] = stats["total_s"] - stats["prefill_s"]
        return DecodeResult(tokens, mask, logprobs, stats)

    # -------------------------------------------------------------------------------------------
    # set-up

    @staticmethod
    def _check_batch(prompt_batch: dict[str, Any], max_new_tokens: int):
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        for key in ("input_ids", "attention_mask"):
            if not isinstance(prompt_batch.get(key), torch.Tensor) or prompt_batch[key].ndim != 2:
                raise ValueError(f"prompt_batch[{key!r}] must be a 2-D tensor")
        input_ids, attention_mask = prompt_batch["input_ids"], prompt_batch["attention_mask"]
        if input_ids.shape != attention_mask.shape or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(
                f"prompt_batch input_ids {tuple(input_ids.shape)} and attention_mask "
                f"{tuple(attention_mask.shape)} must have the same non-empty shape"
            )
        if not bool((attention_mask[:, -1] != 0).all()):
            raise ValueError("prompt_batch must be left-padded: attention_mask[:, -1] must be 1 on every row")
        return input_ids, attention_mask

    def _prepare(self, needed: StateShape, params, eos_token_id, pad_token_id, device) -> DecodeState:
        """The state for this call; buffers and graphs are dropped when they cannot be reused."""
        state = self._state
        if state is None or not state.shape.fits(needed):
            self._drop_graphs()
            self._state = state = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            self._state = state = DecodeState(needed)
        if params != self._params or (eos_token_id, pad_token_id) != self._eos_pad:
            self._drop_graphs()
            self._params, self._eos_pad = params, (eos_token_id, pad_token_id)
            self._suppressed = suppress_mask(params, needed.vocab_size, device)
        fingerprint = _parameter_fingerprint(self.model)
        if fingerprint != self._fingerprint:
            self._drop_graphs()
            self._fingerprint = fingerprint
        if self._generator is None or self._generator.device != device:
            self._drop_graphs()
            self._generator = torch.Generator(device=device)
        return state

    def _drop_graphs(self) -> None:
        self._graphs.clear()
        self._eager_runs.clear()
        self._graph_pool = None

    def _seed(self, seed: int | None, device) -> None:
        if seed is None:
            # drawn from the global RNG, so that torch.manual_seed still fixes an unseeded call
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self._generator.manual_seed(seed)

    # -------------------------------------------------------------------------------------------
    # the decode step (everything below `_step` is what a CUDA graph captures)

    def _attention_masks(self, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        mask = valid[:, None, None, :]
        if self._attention == "eager":
            dtype = self._state.shape.kv_dtype
            mask = torch.zeros((), dtype=dtype, device=valid.device).masked_fill(
                ~mask, torch.finfo(dtype).min
            )
        return {"full_attention": mask}

    def _record(self, state: DecodeState, logits: torch.Tensor, bucket: int) -> None:
        """Choose the tokens of rows [:bucket] from their logits and store them (in place)."""
        params = self._params
        eos_token_id, pad_token_id = self._eos_pad
        seen = state.seen[:bucket] if state.seen is not None else None
        scores = process_logits(logits, params, seen=seen, suppressed=self._suppressed)
        tokens, logprobs = choose_tokens(scores, params, self._generator)
        finished = state.finished[:bucket]
        tokens = tokens.masked_fill(finished, pad_token_id)
        logprobs = logprobs.masked_fill(finished, 0.0)
        targets = (state.row_map[:bucket], state.step_index.expand(bucket))
        state.tokens.index_put_(targets, tokens)
        state.logprobs.index_put_(targets, logprobs)
        finished.logical_or_(tokens == eos_token_id)
        state.input_ids[:bucket].copy_(tokens.unsqueeze(1))
        state.positions[:, :bucket].add_(1)
        if seen is not None:
            seen.scatter_(1, tokens.unsqueeze(1), True)
        state.step_index.add_(1)

    def _model_forward(self, input_ids, position_ids, attention_mask, cache) -> torch.Tensor:
        output = self.model(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            use_cache=True,
            **{self._cache_keyword: cache},
            logits_to_keep=1,
        )
        return output.logits[:, -1]

    def _step(self, state: DecodeState, bucket: int) -> None:
        """One decode step of rows [:bucket]: fixed shapes, no host synchronisation."""
        state.kv_valid[:bucket].index_fill_(1, state.write_index, True)
        forward = self._forward or self._model_forward
        logits = forward(
            state.input_ids[:bucket],
            state.positions[:, :bucket],
            self._attention_masks(state.kv_valid[:bucket]),
            state.cache(bucket),
        )
        state.write_index.add_(1)
        self._record(state, logits, bucket)

    def _run_step(self, state: DecodeState, bucket: int) -> None:
        graphs = self.options.cuda_graphs and state.shape.device.type == "cuda"
        if not graphs:
            self._step(state, bucket)
            return
        graph = self._graphs.get(bucket)
        if graph is not None:
            graph.replay()
            return
        if self._capture_failed:
            self._step(state, bucket)
            return
        runs = self._eager_runs.get(bucket, 0)
        # warm-up runs on a side stream (lazy library initialisation must not land in the capture)
        stream = torch.cuda.Stream(device=state.shape.device)
        stream.wait_stream(torch.cuda.current_stream(state.shape.device))
        with torch.cuda.stream(stream):
            self._step(state, bucket)
        torch.cuda.current_stream(state.shape.device).wait_stream(stream)
        self._eager_runs[bucket] = runs + 1
        if runs + 1 >= self.options.warmup_steps and not self._capture_failed:
            try:
                self._graphs[bucket] = self._capture(state, bucket)
            except Exception as error:  # any capture failure: keep decoding eagerly
                # recording ran no kernel, so the state is intact and decoding goes on without graphs
                self._capture_failed = True
                warnings.warn(f"CUDA graph capture failed, decoding eagerly: {error}", stacklevel=2)

    def _capture(self, state: DecodeState, bucket: int):
        """Record (not run) one step of `bucket` rows; replays advance the engine's generator."""
        device = state.shape.device
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self._generator)
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        # recording draws no numbers, but may move the generator's offset: restore it so that a seed
        # gives the same samples whether or not this call captured graphs
        generator_state = self._generator.get_state()
        # the buckets' graphs replay one after another, never concurrently: they share one pool;
        # thread_local: CUDA calls of other threads (data loaders, loggers) do not void the capture
        with torch.cuda.graph(graph, pool=self._graph_pool, capture_error_mode="thread_local"):
            self._step(state, bucket)
        self._generator.set_state(generator_state)
        return graph

    def _decode_loop(self, state: DecodeState, rows: int, max_new_tokens: int) -> tuple[int, int, list[int]]:
        """Run decode steps until every row finished or `max_new_tokens`; returns (tokens per row
        produced, compactions, buckets used)."""
        check_every = self.options.check_every or (8 if state.shape.device.type == "cuda" else 1)
        buckets = bucket_sizes(state.shape.rows, self.options.min_bucket)
        bucket = smallest_bucket(buckets, rows)
        used, compactions = [bucket], 0
        steps, since_check = 1, check_every
        while steps < max_new_tokens:
            if since_check >= check_every:
                since_check = 0
                alive = torch.nonzero(~state.finished[:bucket]).flatten()  # host synchronisation
                if alive.numel() == 0:
                    break
                target = smallest_bucket(buckets, alive.numel())
                if target < bucket:
                    state.compact(alive, target)
                    bucket = target
                    used.append(bucket)
                    compactions += 1
            self._run_step(state, bucket)
            steps += 1
            since_check += 1
        return steps, compactions, used
