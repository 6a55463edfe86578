"""The static-cache decode engine against transformers `generate` on the fp32 tiny Qwen2.5-VL (CPU).

The engine's decode loop runs eagerly here (CUDA graphs need a GPU): greedy tokens must equal
`generate`'s exactly (left-padded prompts of different lengths, images of different sizes, EOS in
the middle of the batch with compaction), samples must follow the same distribution, and the
sampling log-probs must equal a teacher-forced recomputation.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from aesr1.generation import SamplingConfig
from aesr1.modeling.chat import build_inputs, model_inputs
from aesr1.modeling.tiny import build_tiny_model
from aesr1.rollout import (
    DecodeEngine,
    EngineOptions,
    SamplingParams,
    bucket_sizes,
    engine_blockers,
    generate_rollouts,
    generate_rollouts_hf,
    process_logits,
)

MAX_NEW = 16
PROMPTS = [
    "Rate <image> now.",
    "Describe this <image> in some detail, please.",
    "<image>",
    "Score: <image>",
    "Hi <image>",
]
SIZES = (56, 112, 80, 64, 96)


@pytest.fixture(scope="module")
def tiny():
    model, processor = build_tiny_model(seed=0)
    model.eval()
    return model, processor


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((s, s, 3)) * 255).astype("uint8")) for s in SIZES]


@pytest.fixture(scope="module")
def batch(tiny, images):
    """Five rows: prompts of different lengths, images with 4 to 16 visual tokens, left-padded."""
    _, processor = tiny
    prompt_batch = build_inputs(processor, images, PROMPTS)
    lengths = prompt_batch["attention_mask"].sum(dim=1)
    assert len(set(lengths.tolist())) >= 4  # really different lengths: padding is exercised
    return prompt_batch


def test_engine_passes_the_cache_under_the_installed_transformers_name(tiny):
    """transformers 5.17 names the forward's KV cache `past_key_values`, later releases `cache`."""
    import inspect

    from aesr1.rollout.engine import CACHE_KEYWORDS, cache_keyword, supports_model

    model, _ = tiny
    assert supports_model(model) is None
    name = cache_keyword(model)
    assert name in CACHE_KEYWORDS and name in inspect.signature(model.forward).parameters
    DecodeEngine(model)  # raises when the model is not supported


def hf_greedy(model, prompt_batch, max_new_tokens, eos, pad):
    with torch.no_grad():
        output = model.generate(
            **model_inputs(prompt_batch), max_new_tokens=max_new_tokens, do_sample=False,
            temperature=None, top_p=None, top_k=None, eos_token_id=eos, pad_token_id=pad,
        )  # fmt: skip
    completion = output[:, prompt_batch["input_ids"].shape[1] :]
    is_eos = (completion == eos).long()
    mask = ((torch.cumsum(is_eos, 1) - is_eos) == 0).long()
    return completion.masked_fill(mask == 0, pad), mask


def ids(processor):
    tokenizer = processor.tokenizer
    return tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id


def greedy(model, prompt_batch, eos, pad, max_new_tokens=MAX_NEW, **options):
    engine = DecodeEngine(model, EngineOptions(**options))
    return engine.decode(
        prompt_batch,
        SamplingParams(do_sample=False),
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=pad,
    )


def recomputed_logits(model, rollout_batch):
    """Logits scoring each completion token, from one teacher-forced forward of prompt + completion."""
    with torch.no_grad():
        logits = model(**model_inputs(rollout_batch)).logits
    prompt_length = rollout_batch["prompt_length"]
    width = rollout_batch["completion_ids"].shape[1]
    return logits[:, prompt_length - 1 : prompt_length - 1 + width].float()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_greedy_matches_generate_with_images_and_padding(tiny, batch, attention):
    model, processor = tiny
    if attention != "sdpa":
        model = copy.deepcopy(model)
        model.set_attn_implementation(attention)
    eos, pad = ids(processor)
    want, want_mask = hf_greedy(model, batch, MAX_NEW, eos, pad)
    got = greedy(model, batch, eos, pad, kv_block=7)
    assert torch.equal(got.completion_ids, want)
    assert torch.equal(got.completion_mask, want_mask)
    assert got.stats["decode_steps"] == MAX_NEW - 1


def choose_mid_batch_eos(completions: torch.Tensor) -> int:
    """A token some rows produce early and at least two rows never produce: EOS for the test."""
    rows = completions.tolist()
    for column in range(1, completions.shape[1] - 4):
        for token in {row[column] for row in rows}:
            ends = [row.index(token) if token in row else None for row in rows]
            if sum(e is None for e in ends) >= 2 and any(
                e is not None and e < completions.shape[1] - 3 for e in ends
            ):
                return token
    raise AssertionError("no token ends some rows early")


def test_eos_mid_batch_matches_generate_and_compacts_finished_rows(tiny, batch):
    model, processor = tiny
    _, pad = ids(processor)
    free_run, _ = hf_greedy(model, batch, MAX_NEW, eos=10**6, pad=pad)
    eos = choose_mid_batch_eos(free_run)
    want, want_mask = hf_greedy(model, batch, MAX_NEW, eos, pad)
    got = greedy(model, batch, eos, pad, check_every=1)
    assert torch.equal(got.completion_ids, want)
    assert torch.equal(got.completion_mask, want_mask)
    assert want_mask.sum(1).min() < MAX_NEW and want_mask.sum(1).max() == MAX_NEW  # EOS really mid-batch
    assert got.stats["compactions"] >= 1
    assert got.stats["buckets"][0] == 5 and got.stats["buckets"][-1] < 5
    # compaction is an optimisation only: without it (one bucket) the tokens are the same
    unbucketed = greedy(model, batch, eos, pad, check_every=1, min_bucket=5)
    assert unbucketed.stats["compactions"] == 0
    assert torch.equal(unbucketed.completion_ids, want)


def test_decoding_stops_once_every_row_finished(tiny, batch):
    model, processor = tiny
    _, pad = ids(processor)
    twins = batch_rows(batch, [1, 1])  # identical rows: they finish on the same step
    free_run, _ = hf_greedy(model, twins, MAX_NEW, eos=10**6, pad=pad)
    eos = int(free_run[0, 3])
    stop = free_run[0].tolist().index(eos)
    want, _ = hf_greedy(model, twins, MAX_NEW, eos, pad)
    got = greedy(model, twins, eos, pad, check_every=1)
    assert torch.equal(got.completion_ids, want) and want.shape[1] == stop + 1
    assert got.stats["decode_steps"] == stop  # no step after the last EOS


def batch_rows(prompt_batch, rows):
    """Rows of a prompt batch (pixel values follow their images), re-left-padded to the new width."""
    patches = (prompt_batch["image_grid_thw"].prod(-1)).tolist()
    starts = np.cumsum([0, *patches])
    out = {}
    keep = prompt_batch["attention_mask"][rows].sum(1).max()
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        out[key] = prompt_batch[key][rows][:, -keep:]
    out["pixel_values"] = torch.cat([prompt_batch["pixel_values"][starts[r] : starts[r + 1]] for r in rows])
    out["image_grid_thw"] = prompt_batch["image_grid_thw"][rows]
    return out


def test_text_only_prompts_match_generate(tiny):
    model, processor = tiny
    eos, pad = ids(processor)
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    texts = ["<|im_start|>user\nRate it<|im_end|>\n<|im_start|>assistant\n", "<|im_start|>assistant\n"]
    prompt_batch = dict(tokenizer(texts, return_tensors="pt", padding=True))
    want, _ = hf_greedy(model, prompt_batch, MAX_NEW, eos, pad)
    assert torch.equal(greedy(model, prompt_batch, eos, pad).completion_ids, want)


def test_kv_capacity_edges(tiny, batch):
    """Capacity exactly prompt + completion - 1 (kv_block=1), and a single new token (no decode step)."""
    model, processor = tiny
    eos, pad = ids(processor)
    want, _ = hf_greedy(model, batch, 5, eos, pad)
    assert torch.equal(greedy(model, batch, eos, pad, max_new_tokens=5, kv_block=1).completion_ids, want)
    one = greedy(model, batch, eos, pad, max_new_tokens=1)
    assert torch.equal(one.completion_ids, want[:, :1])
    assert one.stats["decode_steps"] == 0


@pytest.fixture(scope="module")
def peaked(tiny):
    """The tiny model with a sharper output distribution (random init is nearly uniform)."""
    model = copy.deepcopy(tiny[0])
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
    return model


def test_first_token_distribution_matches_generate(peaked, tiny):
    """Chi-squared tests on 1,500 first tokens of one fixed prompt: engine vs `generate` (two-sample)
    and engine vs the float64 probabilities of the processed distribution (goodness of fit)."""
    _, processor = tiny
    eos, pad = ids(processor)
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    rows = 1500
    prompt = dict(
        tokenizer(
            ["<|im_start|>user\nRate this picture.<|im_end|>\n<|im_start|>assistant\n"], return_tensors="pt"
        )
    )
    prompt_batch = {k: v.repeat(rows, 1) for k, v in prompt.items()}
    params = SamplingParams(temperature=2.5, top_k=12, top_p=0.95)
    engine = DecodeEngine(peaked)
    got = engine.decode(prompt_batch, params, max_new_tokens=1, eos_token_id=eos, pad_token_id=pad, seed=1)
    torch.manual_seed(2)
    with torch.no_grad():
        output = peaked.generate(**prompt_batch, max_new_tokens=1, do_sample=True, temperature=2.5, top_k=12,
                                 top_p=0.95, eos_token_id=eos, pad_token_id=pad)  # fmt: skip
        logits = peaked(**prompt).logits[0, -1].double()
    ours = torch.bincount(got.completion_ids[:, 0], minlength=logits.numel()).numpy()
    theirs = torch.bincount(output[:, -1], minlength=logits.numel()).numpy()
    # float64 processed distribution, written out independently of aesr1.rollout.sampling
    scores = logits / 2.5
    scores[scores < torch.topk(scores, 12).values[-1]] = -torch.inf
    ordered, order = torch.sort(scores)
    drop = ordered.softmax(-1).cumsum(-1) <= 0.05
    drop[-1] = False
    scores[order[drop]] = -torch.inf
    probs = scores.softmax(-1).numpy()
    support = probs > 0
    assert 3 <= support.sum() <= 12
    assert ours[~support].sum() == 0 and theirs[~support].sum() == 0
    _, p_fit, _, _ = stats.chi2_contingency(np.stack([ours[support], theirs[support]]))
    assert p_fit > 1e-3
    _, p_exact = stats.chisquare(ours[support], probs[support] * rows)
    assert p_exact > 1e-3
    assert np.allclose(
        got.sampling_logprobs[:, 0].numpy(), np.log(probs[got.completion_ids[:, 0].numpy()]), atol=1e-5
    )


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingConfig(num_samples=2, temperature=0.7, max_new_tokens=MAX_NEW),
        SamplingConfig(num_samples=2, temperature=1.3, top_k=7, top_p=0.8, max_new_tokens=MAX_NEW),
    ],
    ids=["temperature", "top-k-top-p"],
)
def test_sampling_logprobs_equal_recomputed_log_softmax(peaked, tiny, images, sampling):
    """Every decode step's log-prob equals the processed log-softmax of a teacher-forced forward."""
    _, processor = tiny
    rollout = generate_rollouts(
        peaked, processor, images[:3], sampling, prompt=PROMPTS[:3], seed=5, engine="engine"
    )
    batch = rollout.batch
    mask = batch["completion_mask"].bool()
    assert batch["sampling_logprobs"].shape == mask.shape and mask.sum(1).max() > 2
    logits = recomputed_logits(peaked, batch)
    params = SamplingParams(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
    rows, width, vocab = logits.shape
    scores = process_logits(logits.reshape(-1, vocab), params).reshape(rows, width, vocab)
    recomputed = torch.log_softmax(scores, -1).gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    if sampling.top_k == 0:  # no filter: the trainer's own recomputation log_softmax(logits / T)
        plain = torch.log_softmax(logits / sampling.temperature, -1)
        plain = plain.gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(plain[mask], recomputed[mask])
    assert torch.isfinite(recomputed[mask]).all()
    torch.testing.assert_close(batch["sampling_logprobs"][mask], recomputed[mask], atol=1e-4, rtol=1e-4)
    assert (batch["sampling_logprobs"][~mask] == 0).all()


def test_seeded_sampling_is_reproducible(peaked, tiny, images):
    _, processor = tiny
    sampling = SamplingConfig(num_samples=3, max_new_tokens=8)
    first = generate_rollouts(peaked, processor, images[:2], sampling, seed=11, engine="engine")
    again = generate_rollouts(peaked, processor, images[:2], sampling, seed=11, engine="engine")
    other = generate_rollouts(peaked, processor, images[:2], sampling, seed=12, engine="engine")
    assert torch.equal(first.completion_ids, again.completion_ids)
    assert torch.equal(first.batch["sampling_logprobs"], again.batch["sampling_logprobs"])
    assert not torch.equal(first.completion_ids, other.completion_ids)


def test_engine_sees_optimiser_steps_without_a_copy(tiny, batch):
    """The engine runs the policy module itself: after an optimiser step its greedy tokens are the
    updated model's (equal to `generate` after the step), and its buffers are reused."""
    _, processor = tiny
    model = copy.deepcopy(tiny[0])
    eos, pad = ids(processor)
    engine = DecodeEngine(model)
    params = SamplingParams(do_sample=False)
    before = engine.decode(batch, params, max_new_tokens=MAX_NEW, eos_token_id=eos, pad_token_id=pad)
    state = engine._state
    optimiser = torch.optim.SGD(model.parameters(), lr=5.0)
    target = before.completion_ids[:, 0]
    model.train()
    logits = model(**model_inputs(batch)).logits[:, -1]
    torch.nn.functional.cross_entropy(logits, (target + 1) % logits.shape[-1]).backward()
    optimiser.step()
    model.eval()
    after = engine.decode(batch, params, max_new_tokens=MAX_NEW, eos_token_id=eos, pad_token_id=pad)
    want, _ = hf_greedy(model, batch, MAX_NEW, eos, pad)
    assert torch.equal(after.completion_ids, want)
    assert not torch.equal(after.completion_ids, before.completion_ids)
    assert engine._state is state and engine.model is model


def test_captured_graphs_are_dropped_when_weights_move(tiny, batch):
    """Graphs bake parameter addresses: a replaced parameter tensor or a train/eval switch drops them."""
    _, processor = tiny
    model = copy.deepcopy(tiny[0])
    eos, pad = ids(processor)
    engine = DecodeEngine(model)
    params = SamplingParams(do_sample=False)
    engine.decode(batch, params, max_new_tokens=3, eos_token_id=eos, pad_token_id=pad)
    engine._graphs[5] = "captured"  # stands in for a CUDA graph (none can be captured on CPU)
    engine.decode(batch, params, max_new_tokens=3, eos_token_id=eos, pad_token_id=pad)
    assert engine._graphs == {5: "captured"}  # same storage: kept
    with torch.no_grad():
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.clone())
    engine.decode(batch, params, max_new_tokens=3, eos_token_id=eos, pad_token_id=pad)
    assert engine._graphs == {}
    engine._graphs[5] = "captured"
    engine.decode(batch, SamplingParams(do_sample=True), max_new_tokens=3, eos_token_id=eos, pad_token_id=pad)
    assert engine._graphs == {}  # other sampling settings: other graphs


def test_buffers_are_reused_across_calls_and_grown_when_needed(tiny, batch):
    model, processor = tiny
    eos, pad = ids(processor)
    engine = DecodeEngine(model, EngineOptions(kv_block=64))
    params = SamplingParams(do_sample=False)
    engine.decode(batch, params, max_new_tokens=MAX_NEW, eos_token_id=eos, pad_token_id=pad)
    state = engine._state
    smaller = batch_rows(batch, [2, 4])  # fewer rows, shorter prompt: fits
    want, _ = hf_greedy(model, smaller, MAX_NEW, eos, pad)
    got = engine.decode(smaller, params, max_new_tokens=MAX_NEW, eos_token_id=eos, pad_token_id=pad)
    assert engine._state is state and torch.equal(got.completion_ids, want)
    assert got.stats["buckets"][0] == 2  # the smallest bucket of the 5-row buffers that holds 2 rows
    more = batch_rows(batch, [0, 1, 2, 3, 4, 0, 1])  # more rows than the buffers hold: new buffers
    got = engine.decode(more, params, max_new_tokens=MAX_NEW, eos_token_id=eos, pad_token_id=pad)
    assert engine._state is not state and engine._state.shape.rows == 7
    assert torch.equal(got.completion_ids[5:], got.completion_ids[:2])
    engine.release()
    assert engine._state is None
    assert torch.equal(engine.decode(smaller, params, max_new_tokens=MAX_NEW, eos_token_id=eos,
                                     pad_token_id=pad).completion_ids, want)  # fmt: skip


def test_repetition_penalty_and_suppressed_tokens_match_generate(tiny, images):
    """Settings `generate` takes from generation_config (Qwen2.5-VL ships repetition_penalty=1.05)."""
    _, processor = tiny
    model = copy.deepcopy(tiny[0])
    sampling = SamplingConfig(num_samples=1, do_sample=False, max_new_tokens=MAX_NEW)
    plain = generate_rollouts_hf(model, processor, images[:3], sampling, prompt=PROMPTS[:3])
    model.generation_config.repetition_penalty = 1.8
    model.generation_config.suppress_tokens = sorted({int(t) for t in plain.completion_ids[:, :2].flatten()})
    want = generate_rollouts_hf(model, processor, images[:3], sampling, prompt=PROMPTS[:3])
    got = generate_rollouts(model, processor, images[:3], sampling, prompt=PROMPTS[:3], engine="engine")
    assert not torch.equal(want.completion_ids, plain.completion_ids)  # the settings are active
    assert torch.equal(got.completion_ids, want.completion_ids)


def test_engine_rollout_equals_generate_rollout(tiny, images):
    model, processor = tiny
    sampling = SamplingConfig(num_samples=2, do_sample=False, max_new_tokens=MAX_NEW)
    want = generate_rollouts_hf(model, processor, images[:3], sampling, prompt=PROMPTS[:3])
    got = generate_rollouts(model, processor, images[:3], sampling, prompt=PROMPTS[:3], engine="engine")
    assert got.texts == want.texts and got.num_samples == 2
    assert set(got.batch) == set(want.batch)
    for key, value in want.batch.items():
        if key == "sampling_logprobs":  # computed by different kernels: compared below
            continue
        if isinstance(value, torch.Tensor):
            assert torch.equal(got.batch[key], value), key
        else:
            assert got.batch[key] == value, key
    logits = recomputed_logits(model, got.batch)
    mask = got.batch["completion_mask"].bool()
    greedy_logp = torch.log_softmax(logits, -1).gather(-1, got.completion_ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(got.batch["sampling_logprobs"][mask], greedy_logp[mask], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(want.batch["sampling_logprobs"][mask], greedy_logp[mask], atol=1e-4, rtol=1e-4)


def test_generate_backend_records_the_same_sampling_logprobs(peaked, tiny, images):
    _, processor = tiny
    sampling = SamplingConfig(num_samples=2, temperature=0.9, top_k=9, top_p=0.9, max_new_tokens=MAX_NEW)
    rollout = generate_rollouts_hf(peaked, processor, images[:2], sampling, prompt=PROMPTS[:2], seed=3)
    batch = rollout.batch
    mask = batch["completion_mask"].bool()
    logits = recomputed_logits(peaked, batch)
    rows, width, vocab = logits.shape
    params = SamplingParams(temperature=0.9, top_k=9, top_p=0.9)
    scores = process_logits(logits.reshape(-1, vocab), params).reshape(rows, width, vocab)
    recomputed = torch.log_softmax(scores, -1).gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(batch["sampling_logprobs"][mask], recomputed[mask], atol=1e-4, rtol=1e-4)
    # auto on CPU is `generate`: the same samples for the same seed
    auto = generate_rollouts(peaked, processor, images[:2], sampling, prompt=PROMPTS[:2], seed=3)
    assert torch.equal(auto.completion_ids, rollout.completion_ids)


def test_bad_input_is_named(tiny, batch, images):
    model, processor = tiny
    eos, pad = ids(processor)
    engine = DecodeEngine(model)
    right_padded = dict(batch, attention_mask=batch["attention_mask"].flip(1))
    with pytest.raises(ValueError, match="left-padded"):
        engine.decode(right_padded, SamplingParams(), max_new_tokens=4, eos_token_id=eos, pad_token_id=pad)
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.decode(batch, SamplingParams(), max_new_tokens=0, eos_token_id=eos, pad_token_id=pad)
    with pytest.raises(ValueError, match="input_ids"):
        engine.decode({"attention_mask": batch["attention_mask"]}, SamplingParams(), max_new_tokens=4,
                      eos_token_id=eos, pad_token_id=pad)  # fmt: skip
    with pytest.raises(ValueError, match="engine must be one of"):
        generate_rollouts(model, processor, images[:1], engine="vllm")
    with pytest.raises(TypeError, match="sampling"):
        generate_rollouts(model, processor, images[:1], {"num_samples": 1})
    with pytest.raises(ValueError, match="images"):
        generate_rollouts(model, processor, [], engine="engine")
    blocked = copy.deepcopy(model)
    blocked.generation_config.no_repeat_ngram_size = 3
    assert any("no_repeat_ngram_size" in reason for reason in engine_blockers(blocked))
    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        generate_rollouts(blocked, processor, images[:1], engine="engine")
    flash = copy.deepcopy(model)
    flash.config.get_text_config()._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attention implementation"):
        DecodeEngine(flash)


def test_bucket_sizes():
    assert bucket_sizes(32) == [32, 16, 8, 4, 2, 1]
    assert bucket_sizes(24) == [24, 16, 8, 4, 2, 1]
    assert bucket_sizes(5, min_bucket=2) == [5, 4, 2]
    assert bucket_sizes(1) == [1]
    with pytest.raises(ValueError, match="min_bucket"):
        EngineOptions(min_bucket=0)


def test_compiled_step_matches_generate(tiny, batch):
    """EngineOptions(compile=True): the decode-step forward through torch.compile (inductor)."""
    model, processor = tiny
    eos, pad = ids(processor)
    two = batch_rows(batch, [0, 2])
    want, _ = hf_greedy(model, two, 3, eos, pad)
    assert torch.equal(greedy(model, two, eos, pad, max_new_tokens=3, compile=True).completion_ids, want)


def test_cached_engines_are_per_model_and_do_not_keep_it_alive(tiny):
    import gc

    from aesr1.rollout import engine_for
    from aesr1.rollout.api import _ENGINES

    model = copy.deepcopy(tiny[0])
    engine = engine_for(model)
    assert engine_for(model) is engine and engine.model is model
    assert engine_for(model, EngineOptions(kv_block=8)) is not engine  # other options: a new engine
    count = len(_ENGINES)
    del model
    gc.collect()
    assert len(_ENGINES) == count - 1
    with pytest.raises(RuntimeError, match="garbage-collected"):
        _ = engine.model
