"""On-device logits processing and token choice of the decode engine (aesr1.rollout.sampling)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from aesr1.rollout.sampling import SamplingParams, choose_tokens, process_logits, suppress_mask


def reference_process(logits, params: SamplingParams, seen=None):
    """Float64 reference of the processing (transformers' processors written out in numpy)."""
    scores = np.asarray(logits, dtype=np.float64).copy()
    for row in range(scores.shape[0]):
        s = scores[row]
        if params.repetition_penalty != 1.0:
            hit = seen[row]
            s[hit] = np.where(
                s[hit] < 0, s[hit] * params.repetition_penalty, s[hit] / params.repetition_penalty
            )
        for token in params.suppress_tokens:
            if token < s.size:
                s[token] = -np.inf
        if not params.do_sample:
            continue
        s /= params.temperature
        if params.top_k > 0:
            kth = np.sort(s)[::-1][min(params.top_k, s.size) - 1]
            s[s < kth] = -np.inf
        if params.top_p < 1.0:
            order = np.argsort(s, kind="stable")
            finite = s[order]
            probs = np.exp(finite - finite.max())
            probs /= probs.sum()
            drop = np.cumsum(probs) <= 1 - params.top_p
            drop[-1] = False
            s[order[drop]] = -np.inf
    return scores


def log_softmax64(scores):
    scores = np.asarray(scores, dtype=np.float64)
    top = scores.max(axis=-1, keepdims=True)
    return scores - top - np.log(np.exp(scores - top).sum(axis=-1, keepdims=True))


params_strategy = st.builds(
    SamplingParams,
    do_sample=st.booleans(),
    temperature=st.sampled_from([0.3, 0.7, 1.0, 1.6]),
    top_k=st.sampled_from([0, 1, 3, 17]),
    top_p=st.sampled_from([1.0, 0.95, 0.6, 0.05]),
    repetition_penalty=st.sampled_from([1.0, 1.3, 0.8]),
    suppress_tokens=st.sampled_from([(), (0,), (2, 5, 40), (1000,)]),
)


def random_case(seed: int, rows: int = 4, vocab: int = 40):
    rng = np.random.default_rng(seed)
    # distinct values (no ties: which of two tied tokens a sort drops is implementation-defined)
    logits = rng.normal(0.0, 3.0, size=(rows, vocab)).astype(np.float32)
    seen = rng.random((rows, vocab)) < 0.2
    return logits, seen


@settings(max_examples=60, deadline=None)
@given(params=params_strategy, seed=st.integers(0, 2**31 - 1))
def test_process_logits_matches_float64_reference(params, seed):
    logits, seen = random_case(seed)
    suppressed = suppress_mask(params, logits.shape[1], "cpu")
    got = process_logits(torch.from_numpy(logits), params, seen=torch.from_numpy(seen), suppressed=suppressed)
    want = reference_process(logits, params, seen)
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(np.isneginf(got.numpy()), np.isneginf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got.numpy()[finite], want[finite], rtol=1e-6, atol=1e-6)
    # the most likely allowed token always survives
    assert np.isfinite(got.numpy()).any(axis=1).all()


@settings(max_examples=40, deadline=None)
@given(params=params_strategy, seed=st.integers(0, 2**31 - 1))
def test_process_logits_equals_transformers_processors(params, seed):
    """The same numbers as the processors `generate` builds for these settings (float32)."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        SuppressTokensLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits, _ = random_case(seed)
    rng = np.random.default_rng(seed + 1)
    pad = 39
    # left-padded sequences: the penalty must skip the padding (transformers 5 prompt_ignore_length)
    input_ids = torch.from_numpy(rng.integers(0, 39, size=(4, 12)))
    padding = torch.tensor([0, 3, 0, 7])
    for row, count in enumerate(padding.tolist()):
        input_ids[row, :count] = pad
    seen = torch.zeros(4, 40, dtype=torch.bool)
    for row, count in enumerate(padding.tolist()):
        seen[row, input_ids[row, count:]] = True
    processors = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        # per row: transformers 5.17 takes one int prompt_ignore_length, later releases a tensor too
        penalties = [
            RepetitionPenaltyLogitsProcessor(params.repetition_penalty, prompt_ignore_length=count)
            for count in padding.tolist()
        ]
        processors.append(
            lambda ids, scores: torch.cat(
                [p(ids[r : r + 1], scores[r : r + 1]) for r, p in enumerate(penalties)], dim=0
            )
        )
    if params.suppress_tokens:
        processors.append(SuppressTokensLogitsProcessor(list(params.suppress_tokens), device="cpu"))
    if params.do_sample:
        if params.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k:
            processors.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            processors.append(TopPLogitsWarper(params.top_p))
    want = processors(input_ids, torch.from_numpy(logits.copy()))
    got = process_logits(
        torch.from_numpy(logits), params, seen=seen, suppressed=suppress_mask(params, 40, "cpu")
    )
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@settings(max_examples=30, deadline=None)
@given(params=params_strategy, seed=st.integers(0, 2**31 - 1))
def test_chosen_logprob_is_the_processed_log_softmax(params, seed):
    logits, seen = random_case(seed)
    scores = process_logits(
        torch.from_numpy(logits),
        params,
        seen=torch.from_numpy(seen),
        suppressed=suppress_mask(params, 40, "cpu"),
    )
    generator = torch.Generator().manual_seed(seed)
    tokens, chosen = choose_tokens(scores, params, generator)
    reference = log_softmax64(reference_process(logits, params, seen))
    picked = reference[np.arange(4), tokens.numpy()]
    assert np.isfinite(picked).all(), "a filtered token was chosen"
    np.testing.assert_allclose(chosen.numpy(), picked, rtol=1e-5, atol=1e-5)
    if not params.do_sample:
        assert tokens.tolist() == np.argmax(reference, axis=1).tolist()


def test_exponential_race_samples_the_processed_distribution():
    """Chi-squared goodness of fit of 30,000 draws against the float64 probabilities."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0, 1.5, 0.2]])
    params = SamplingParams(temperature=0.8, top_k=6, top_p=0.9)
    scores = process_logits(logits.expand(30_000, -1), params)
    tokens, _ = choose_tokens(scores, params, torch.Generator().manual_seed(7))
    probs = np.exp(log_softmax64(reference_process(logits.numpy(), params)))[0]
    counts = np.bincount(tokens.numpy(), minlength=8)
    allowed = probs > 0
    assert counts[~allowed].sum() == 0
    assert allowed.sum() == 4  # top-k keeps 6, top-p 0.9 drops 2 more: both filters are active
    _, p_value = stats.chisquare(counts[allowed], probs[allowed] * counts.sum())
    assert p_value > 1e-3


def test_sampling_is_reproducible_with_the_generator_seed():
    scores = torch.randn(64, 50, generator=torch.Generator().manual_seed(0))
    params = SamplingParams()
    first, _ = choose_tokens(scores, params, torch.Generator().manual_seed(3))
    again, _ = choose_tokens(scores, params, torch.Generator().manual_seed(3))
    other, _ = choose_tokens(scores, params, torch.Generator().manual_seed(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_penalty_needs_seen_and_suppress_mask_ignores_ids_past_the_vocabulary():
    params = SamplingParams(repetition_penalty=1.2, suppress_tokens=(1, 99))
    with pytest.raises(ValueError, match="seen"):
        process_logits(torch.zeros(1, 5), params)
    mask = suppress_mask(params, 5, "cpu")
    assert mask.tolist() == [False, True, False, False, False]
    assert suppress_mask(SamplingParams(), 5, "cpu") is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(top_k=-1), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(suppress_tokens=(-1,)), "suppress_tokens"),
    ],
)
def test_sampling_params_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_greedy_ignores_temperature_and_filters():
    params = SamplingParams(do_sample=False, temperature=0.0, top_k=1, top_p=0.1)
    logits = torch.tensor([[0.5, 2.0, -1.0]])
    assert torch.equal(process_logits(logits, params), logits)
