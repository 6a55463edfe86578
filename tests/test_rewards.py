"""RAPO rewards (paper Eq. 3–9, 13) against the float64 NumPy/SciPy reference in `reference.py`."""

from __future__ import annotations

import re

import numpy as np
import pytest
import reference as ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aesr1 import _core, rewards

TOL = 1e-12  # absolute tolerance against the float64 reference

# ---------------------------------------------------------------------------------------------
# Strategies: small batches drawn value by value (so Hypothesis can shrink them), plus large
# batches (N up to 2048) generated from a drawn seed, with NaN predictions, ties on two-decimal
# grids, identical predictions within and across images, N = 1 and K = 1.

unit = st.floats(0.0, 1.0, allow_nan=False)
two_decimals = st.integers(0, 100).map(lambda v: v / 100)
score = st.one_of(unit, two_decimals, st.just(0.5), st.just(float("nan")))


@st.composite
def small_batches(draw):
    n = draw(st.integers(1, 12))
    k = draw(st.integers(1, 6))
    style = draw(st.sampled_from(["free", "identical_rows", "constant"]))
    if style == "constant":
        value = draw(score)
        pred = np.full((n, k), value)
    elif style == "identical_rows":
        pred = np.array([[draw(score)] * k for _ in range(n)], dtype=float)
    else:
        pred = np.array([[draw(score) for _ in range(k)] for _ in range(n)], dtype=float)
    gt = np.array([draw(st.one_of(unit, two_decimals)) for _ in range(n)])
    return pred, gt


@st.composite
def large_batches(draw):
    n = draw(st.integers(100, 2048))
    k = draw(st.integers(1, 2)) if n > 512 else draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    gt = rng.random(n)
    if draw(st.booleans()):
        gt = np.round(gt, 2)
    spread = draw(st.sampled_from([0.0, 1e-3, 0.05, 0.2]))
    pred = np.clip(gt[:, None] + spread * rng.standard_normal((n, k)), 0, 1)
    if draw(st.booleans()):
        pred = np.round(pred, 2)
    pred[rng.random((n, k)) < draw(st.sampled_from([0.0, 0.1, 0.9]))] = np.nan
    return pred, gt


batches = st.one_of(*([small_batches()] * 9), large_batches())
ties = st.sampled_from(["strict", "half"])


def assert_close(actual, expected, what=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, what
    err = np.abs(actual - expected)
    assert np.all(err <= TOL), (
        f"{what}: max abs error {err.max():.3g} at {np.unravel_index(err.argmax(), err.shape)}"
    )


# ---------------------------------------------------------------------------------------------
# Components


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches, ties=ties)
def test_rank_reward_matches_reference(batch, ties):
    pred, gt = batch
    got = rewards.rank_reward(pred, gt, ties=ties)
    assert_close(got, ref.rank_reward(pred, gt, ties=ties), "rank")
    assert np.all(got[np.isnan(pred)] == 0.0)
    assert np.all((got >= 0) & (got <= 1 + 1e-15))


@settings(max_examples=300, deadline=None)
@given(
    batch=small_batches(), sigma=st.floats(1e-3, 2.0), eps=st.floats(0.0, 1e-2), threshold=st.floats(0.0, 1.0)
)
def test_abs_and_binary_rewards_match_reference(batch, sigma, eps, threshold):
    pred, gt = batch
    assert_close(
        rewards.abs_reward(pred, gt, sigma=sigma, eps=eps),
        ref.abs_reward(pred, gt[:, None], sigma, eps),
        "abs",
    )
    assert np.array_equal(
        rewards.binary_reward(pred, gt, threshold=threshold), ref.binary_reward(pred, gt[:, None], threshold)
    )


reward_values = st.one_of(st.floats(-5, 5, allow_nan=False), st.integers(0, 4).map(float))


@settings(max_examples=300, deadline=None)
@given(
    rows=st.integers(1, 10).flatmap(
        lambda k: st.lists(
            st.one_of(st.lists(reward_values, min_size=k, max_size=k), st.just([1.25] * k)),
            min_size=1,
            max_size=10,
        )
    )
)
def test_group_advantages_match_reference(rows):
    r = np.array(rows, dtype=float)
    got = rewards.group_advantages(r)
    assert_close(got, ref.group_advantages(r), "advantages")
    constant = np.all(r == r[:, :1], axis=1)
    assert np.all(got[constant] == 0.0)


# ---------------------------------------------------------------------------------------------
# The full reward

weight_sets = st.sampled_from(
    list(rewards.WEIGHT_PRESETS.values()) + [rewards.RewardWeights(0.5, 2.0, 0.25, 0.0)]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches, weights=weight_sets, ties=ties)
def test_rapo_matches_reference(batch, weights, ties):
    pred, gt = batch
    out = rewards.rapo({"pred": pred, "gt": gt}, weights=weights, ties=ties)
    want = ref.rapo(pred, gt, weights.as_tuple(), ties=ties)
    for name in ("rank", "abs", "binary", "total"):
        assert_close(getattr(out, name), want[name].ravel(), name)
    # Eq. 9 on the totals, exactly as the reference computes it.
    assert_close(out.advantages, ref.group_advantages(out.total.reshape(pred.shape)).ravel(), "advantages")
    assert np.array_equal(out.advantages, rewards.group_advantages(out.total, num_generations=pred.shape[1]))
    assert out.num_unparseable == int(np.isnan(pred).sum())
    assert np.array_equal(out.scores, pred.ravel(), equal_nan=True)


def completion(value: float, style: int) -> str:
    text = "no score" if np.isnan(value) else f"{value:.2f}"
    return [
        f"<think>Balanced light.</think><answer>{text}</answer>",
        f"<think>a</think>\n<answer> {text} </answer>\n",
        f"Rating: <answer>{text}</answer>",  # parseable, bad format
        f"<think>x</think><answer>0.1</answer><answer>{text}</answer>",
    ][style]


@settings(max_examples=200, deadline=None)
@given(batch=small_batches(), styles=st.lists(st.integers(0, 3), min_size=72, max_size=72))
def test_rapo_from_completions_matches_reference(batch, styles):
    pred, gt = batch
    pred = np.round(pred, 2)
    texts = [
        [completion(v, styles[i * pred.shape[1] + j]) for j, v in enumerate(row)]
        for i, row in enumerate(pred)
    ]
    scores = np.array([[ref.parse_score(t) for t in row] for row in texts])
    fmt = np.array([[ref.format_reward(t) for t in row] for row in texts])
    weights = rewards.RewardWeights(rank=1.0, abs=1.0, binary=0.5, format=0.25)
    out = rewards.rapo({"completions": texts, "gt": gt}, weights=weights)
    want = ref.rapo(scores, gt, weights.as_tuple(), fmt=fmt)
    assert np.array_equal(out.scores, scores.ravel(), equal_nan=True)
    assert np.array_equal(out.format, np.where(np.isnan(scores), 0.0, fmt).ravel())
    for name in ("rank", "abs", "binary", "total"):
        assert_close(getattr(out, name), want[name].ravel(), name)
    assert out.num_unparseable == int(np.isnan(scores).sum())


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=8),
    seed=st.integers(0, 2**32 - 1),
    ties=ties,
)
def test_ragged_shuffled_groups_match_reference(sizes, seed, ties):
    """verl-style batches: groups of different sizes, scattered in any order, labelled by id."""
    rng = np.random.default_rng(seed)
    n, k_max = len(sizes), max(sizes)
    gt = np.round(rng.random(n), 1)
    padded = np.full((n, k_max), np.nan)
    valid = np.zeros((n, k_max), dtype=bool)
    for i, k in enumerate(sizes):
        values = np.round(rng.random(k), 2)
        values[rng.random(k) < 0.2] = np.nan
        padded[i, :k] = values
        valid[i, :k] = True
    labels = np.array([f"img{i}" for i in range(n)])[np.nonzero(valid)[0]]
    flat = padded[valid]
    order = rng.permutation(len(flat))
    out = rewards.rapo(
        {"pred": flat[order], "gt": np.repeat(gt, sizes)[order]}, group_ids=labels[order], ties=ties
    )
    want = ref.rapo(padded, gt, valid=valid, ties=ties)
    for name in ("rank", "abs", "total"):
        assert_close(getattr(out, name), want[name][valid][order], name)
    assert_close(out.advantages, want["advantages"][valid][order], "advantages")


def test_layouts_agree_bitwise():
    """Nested lists, (N, K) arrays, flat + num_generations and shuffled group ids: same numbers."""
    rng = np.random.default_rng(3)
    n, k = 40, 4
    gt = rng.random(n)
    pred = np.round(np.clip(gt[:, None] + 0.1 * rng.standard_normal((n, k)), 0, 1), 2)
    texts = [[f"<think>t</think><answer>{v:.2f}</answer>" for v in row] for row in pred]
    flat = [t for row in texts for t in row]
    a = rewards.rapo({"pred": pred, "gt": gt})
    b = rewards.rapo({"completions": texts, "gt": gt})
    c = rewards.rapo({"completions": flat, "gt": np.repeat(gt, k)}, num_generations=k)
    for x in (b, c):
        assert np.array_equal(a.total, x.total) and np.array_equal(a.advantages, x.advantages)
    # Groups interleaved in a random order, each keeping its members' order: identical bits.
    labels = np.repeat(np.arange(n), k)[rng.permutation(n * k)]
    src = np.empty(n * k, dtype=int)
    for g in range(n):
        src[labels == g] = np.arange(g * k, (g + 1) * k)
    d = rewards.rapo({"pred": pred.ravel()[src], "gt": np.repeat(gt, k)[src]}, group_ids=labels)
    assert np.array_equal(a.total[src], d.total) and np.array_equal(a.advantages[src], d.advantages)
    # Members reordered too: the same up to rounding (sums run in another order).
    perm = rng.permutation(n * k)
    e = rewards.rapo(
        {"pred": pred.ravel()[perm], "gt": np.repeat(gt, k)[perm]}, group_ids=np.repeat(np.arange(n), k)[perm]
    )
    assert_close(e.total, a.total[perm], "total")
    assert np.array_equal(a.rank, rewards.rank_reward(pred, gt).ravel())


# ---------------------------------------------------------------------------------------------
# Edge cases with known answers


def test_single_image_has_no_rank_reward():
    out = rewards.rapo({"pred": [[0.3, 0.5]], "gt": [0.4]})
    assert np.all(out.rank == 0.0)
    assert_close(out.abs, np.exp(-0.5 * (np.array([0.1, 0.1]) / 0.1) ** 2) + 1e-5)


def test_unparseable_completions_get_nothing():
    out = rewards.rapo(
        {
            "completions": [["no answer", "<answer>0.9</answer>"], ["<answer>0.2</answer>", "x"]],
            "gt": [0.9, 0.2],
        }
    )
    assert out.num_unparseable == 2
    assert out.total[0] == 0.0 and out.total[3] == 0.0
    assert out.rank[1] > 0.5 and out.abs[1] == 1.0 + 1e-5


def test_well_formed_but_unparseable_gets_no_format_reward():
    text = "<think>Soft light.</think><answer>high</answer>"
    assert rewards.format_reward([text])[0] == 1.0
    out = rewards.rapo(
        {"completions": [[text, "<think>t</think><answer>0.5</answer>"]], "gt": [0.5]}, weights={"format": 1}
    )
    assert out.format.tolist() == [0.0, 1.0] and out.total.tolist() == [0.0, 1.0]


def test_image_without_parseable_scores_is_not_a_partner():
    pred = np.array([[0.8, 0.7], [np.nan, np.nan], [0.2, 0.3]])
    gt = np.array([0.75, 0.5, 0.25])
    with_dead = rewards.rank_reward(pred, gt)
    without = rewards.rank_reward(pred[[0, 2]], gt[[0, 2]])
    assert_close(with_dead[[0, 2]], without)
    assert np.all(with_dead[1] == 0.0)


def test_correct_order_beats_reversed_order():
    gt = np.array([0.2, 0.5, 0.8])
    right = rewards.rank_reward(np.array([[0.2, 0.25], [0.5, 0.55], [0.8, 0.85]]), gt)
    wrong = rewards.rank_reward(np.array([[0.8, 0.85], [0.5, 0.55], [0.2, 0.25]]), gt)
    assert right.mean() > 0.9 > 0.1 > wrong.mean()


def test_weight_presets_cover_table_2():
    assert set(rewards.WEIGHT_PRESETS) >= {"binary", "error", "rank", "binary+rank", "error+rank"}
    pred, gt = np.array([[0.5, 0.61], [0.1, 0.2]]), np.array([0.55, 0.15])
    base = rewards.rapo({"pred": pred, "gt": gt}, weights="rapo")
    only_binary = rewards.rapo({"pred": pred, "gt": gt}, weights="binary")
    assert np.array_equal(only_binary.total, base.binary)
    assert np.array_equal(rewards.rapo({"pred": pred, "gt": gt}, weights={"abs": 1}).total, base.abs)


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors naming the argument


GOOD = {"pred": np.array([[0.1, 0.2], [0.3, 0.4]]), "gt": np.array([0.1, 0.3])}


@pytest.mark.parametrize(
    ("call", "error", "name"),
    [
        (lambda: rewards.rapo({"pred": GOOD["pred"], "gt": [0.1, 0.2, 0.3]}), ValueError, "gt"),
        (lambda: rewards.rapo({"pred": GOOD["pred"], "gt": [0.1, np.nan]}), ValueError, "gt"),
        (lambda: rewards.rapo({"pred": GOOD["pred"], "gt": [0.1, 1.5]}), ValueError, "gt"),
        (lambda: rewards.rapo({"pred": [[0.1, np.inf]], "gt": [0.1]}), ValueError, "pred"),
        (lambda: rewards.rapo({"pred": [[0.1, 1e200]], "gt": [0.1]}), ValueError, "pred"),
        (lambda: rewards.rapo({"pred": np.zeros((0, 2)), "gt": []}), ValueError, "pred"),
        (lambda: rewards.rapo({"pred": [["a", "b"]], "gt": [0.1]}), TypeError, "pred"),
        (lambda: rewards.rapo({"pred": GOOD["pred"], "gt": "0.1"}), TypeError, "gt"),
        (lambda: rewards.rapo({"pred": [0.1, 0.2, 0.3], "gt": [0.1]}), ValueError, "num_generations"),
        (
            lambda: rewards.rapo({"pred": [0.1, 0.2, 0.3], "gt": [0.1]}, num_generations=2),
            ValueError,
            "num_generations",
        ),
        (
            lambda: rewards.rapo({"pred": [0.1, 0.2], "gt": [0.1, 0.2]}, group_ids=[0]),
            ValueError,
            "group_ids",
        ),
        (lambda: rewards.rapo({"pred": [0.1, 0.2], "gt": [0.1, 0.2]}, group_ids=[0, 0]), ValueError, "gt"),
        (
            lambda: rewards.rapo(
                {"completions": ["<answer>0.1</answer>", 3], "gt": [0.1]}, num_generations=2
            ),
            TypeError,
            "completions[1]",
        ),
        (
            lambda: rewards.rapo({"completions": "<answer>0.1</answer>", "gt": [0.1]}),
            TypeError,
            "completions",
        ),
        (lambda: rewards.rapo({"completions": [], "gt": []}), ValueError, "completions"),
        (lambda: rewards.rapo({"completions": [["a"], "b"], "gt": [0.1, 0.2]}), TypeError, "completions[1]"),
        (lambda: rewards.rapo({"gt": [0.1]}), ValueError, "batch"),
        (lambda: rewards.rapo([0.1, 0.2]), TypeError, "batch"),
        (lambda: rewards.rapo(GOOD, weights="nope"), ValueError, "weights"),
        (lambda: rewards.rapo(GOOD, weights={"rank": 1, "style": 2}), ValueError, "weights"),
        (lambda: rewards.rapo(GOOD, weights={"format": 1}), ValueError, "weights.format"),
        (lambda: rewards.rapo(GOOD, sigma=0.0), ValueError, "sigma"),
        (lambda: rewards.rapo(GOOD, gamma=-1.0), ValueError, "gamma"),
        (lambda: rewards.rapo(GOOD, eps=float("nan")), ValueError, "eps"),
        (lambda: rewards.rapo(GOOD, ties="ordered"), ValueError, "ties"),
        (lambda: rewards.abs_reward([0.1, 0.2], [0.1]), ValueError, "gt"),
        (lambda: rewards.group_advantages([1.0, 2.0, np.nan], num_generations=3), ValueError, "rewards"),
        (lambda: rewards.parse_scores(["<answer>1</answer>", None]), TypeError, "completions[1]"),
    ],
)
def test_bad_input_names_the_argument(call, error, name):
    with pytest.raises(error, match=re.escape(f"`{name}`")) as info:
        call()
    assert type(info.value) is error


def test_result_arrays_are_read_only():
    out = rewards.rapo(GOOD)
    with pytest.raises(ValueError):
        out.total[0] = 1.0


# ---------------------------------------------------------------------------------------------
# Φ, the normal distribution function inside the rank reward


@settings(max_examples=500, deadline=None)
@given(
    x=st.lists(
        st.one_of(
            st.floats(-37.5, 9.0),
            st.floats(-1.0, 1.0),
            st.sampled_from([0.0, -0.67448975, 5.656854249492381]),
        ),
        min_size=1,
        max_size=50,
    )
)
def test_normal_cdf_matches_scipy(x):
    from scipy.special import ndtr

    x = np.array(x)
    got, want = _core.ndtr(x), ndtr(x)
    # SciPy's ndtr (Cephes) loses ~x²·ulp in the lower tail (it rounds x² before exp(-x²/2)):
    # measured against mpmath, up to 4e-15 relative at x = -5 and 2.4e-13 at x = -37.5, while
    # ours stays within 7e-16. So compare at 2e-15 plus SciPy's x²-growing error.
    tol = (2e-15 + 3e-16 * x * x) * want
    assert np.all(np.abs(got - want) <= tol), np.max(np.abs(got - want) / want)
    assert np.all(_core.ndtr(-x) + got <= 1 + 2e-16)
