"""Edges of the reward and metric inputs: rewards too large to square, weights that overflow the
total, ragged nested batches with one ground truth per image, text that is not valid Unicode,
masked arrays, and error messages that name the argument at fault."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

from aesr1 import metrics, rewards

TOL = 1e-12


def advantages_scaled_ref(rows: np.ndarray, exponent: int) -> np.ndarray:
    """Eq. 9 of ``rows · 2**exponent``, computed on `rows` (the same numbers, scaled by a power of two,
    which float64 does exactly) with the 1e-4 scaled alike: (r − mean) / (std + 1e-4)."""
    return ref.group_advantages(rows) if exponent == 0 else _eq9(rows, 1e-4 / 2.0**exponent)


def _eq9(rows: np.ndarray, eps: float) -> np.ndarray:
    k = rows.shape[1]
    mean = rows[:, :1] + (rows - rows[:, :1]).sum(axis=1, keepdims=True) / k
    std = np.sqrt(((rows - mean) ** 2).sum(axis=1, keepdims=True) / max(k - 1, 1))
    return np.where(k >= 2, (rows - mean) / (std + eps), 0.0)


# ---------------------------------------------------------------------------------------------
# Group statistics without overflow


@pytest.mark.parametrize("big", [1e200, 1e308, np.finfo(np.float64).max])
def test_advantages_of_rewards_too_large_to_square(big):
    got = rewards.group_advantages([[big, -big], [2.0, 3.0]])
    np.testing.assert_allclose(got[0], [math.sqrt(0.5), -math.sqrt(0.5)], rtol=1e-15)
    assert np.array_equal(got[1], rewards.group_advantages([[2.0, 3.0]])[0])


# The reference squares the unscaled rows: magnitudes below 1e-100 would underflow there, not in aesr1.
REWARD_UNITS = st.floats(-5, 5, allow_nan=False).filter(lambda x: x == 0 or abs(x) > 1e-100)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(2, 6),
    st.integers(1, 4),
    st.integers(400, 1000),
    st.data(),
)
def test_huge_rewards_follow_eq9(k, n, exponent, data):
    rows = np.array([[data.draw(REWARD_UNITS) for _ in range(k)] for _ in range(n)], dtype=np.float64)
    got = rewards.group_advantages(rows * 2.0**exponent)
    np.testing.assert_allclose(got, advantages_scaled_ref(rows, exponent), rtol=0, atol=TOL)


def test_ordinary_rewards_are_unchanged():
    rows = np.random.default_rng(0).normal(size=(50, 6))
    assert np.array_equal(rewards.group_advantages(rows), _eq9(rows, 1e-4))


def test_huge_weights_give_the_advantages_of_their_total():
    batch = {"pred": [[0.1, 0.9, 0.3], [0.5, 0.45, np.nan]], "gt": [0.2, 0.6]}
    out = rewards.rapo(batch, weights={"rank": 1e200, "abs": 1e200})
    assert np.all(np.isfinite(out.total)) and np.abs(out.advantages).max() > 0.5
    # Eq. 9 on the total, in float64 on the total scaled down by 2^664 (exactly), 1e-4 scaled up.
    np.testing.assert_allclose(
        out.advantages, advantages_scaled_ref(out.total.reshape(2, 3) / 2.0**664, 664).ravel(), atol=TOL
    )


def test_weights_that_overflow_the_total_are_named():
    batch = {"pred": [[0.2, 0.2], [0.6, 0.6]], "gt": [0.2, 0.6]}  # rank + abs ≈ 2
    with pytest.raises(ValueError, match=r"`weights` is too large: the weighted total reward") as info:
        rewards.rapo(batch, weights={"rank": 1e308, "abs": 1e308})
    assert "rewards" not in str(info.value)


def test_eq9_uses_the_sample_standard_deviation():
    r = np.array([[0.0, 1.0, 2.0]])
    assert rewards.group_advantages(r)[0, 0] == pytest.approx(-1.0 / (np.std(r, ddof=1) + 1e-4), rel=1e-15)


# ---------------------------------------------------------------------------------------------
# Ragged nested completions with one ground truth per image


def test_ragged_nested_completions_take_one_ground_truth_per_image():
    completions = [
        ["<answer>0.1</answer>", "<answer>0.3</answer>"],
        ["<answer>0.5</answer>"],
        ["<answer>0.9</answer>", "bad", "<answer>0.8</answer>"],
    ]
    per_image = rewards.rapo({"completions": completions, "gt": [0.2, 0.6, 0.85]})
    per_completion = rewards.rapo({"completions": completions, "gt": [0.2, 0.2, 0.6, 0.85, 0.85, 0.85]})
    for field in ("total", "rank", "abs", "advantages"):
        assert np.array_equal(getattr(per_image, field), getattr(per_completion, field)), field
    with pytest.raises(ValueError, match=r"`gt` has length 4, expected 3 \(one per image\) or 6"):
        rewards.rapo({"completions": completions, "gt": [0.2, 0.6, 0.85, 0.1]})


def test_flat_batches_with_group_ids_still_need_gt_per_completion():
    # Labels carry no image order, so a per-image `gt` would be ambiguous.
    with pytest.raises(ValueError, match="`gt` has length 2, expected 3"):
        rewards.rapo({"pred": [0.1, 0.2, 0.3], "gt": [0.2, 0.6]}, group_ids=["b", "a", "b"])


# ---------------------------------------------------------------------------------------------
# Error messages name the argument


@pytest.mark.parametrize("weights", [{"abs": "x"}, {"rank": None}, rewards.RewardWeights(abs="x")])
def test_bad_weight_values_are_named(weights):
    with pytest.raises(TypeError, match=r"`weights(\['\w+'\]|\.\w+)` must be a number"):
        rewards.rapo({"pred": [[0.1, 0.9]], "gt": [0.2]}, weights=weights)


def test_numeric_strings_as_weights_still_work():
    a = rewards.rapo({"pred": [[0.1, 0.9]], "gt": [0.2]}, weights={"abs": "2"})
    b = rewards.rapo({"pred": [[0.1, 0.9]], "gt": [0.2]}, weights={"abs": 2.0})
    assert np.array_equal(a.total, b.total)


# ---------------------------------------------------------------------------------------------
# Text that is not valid Unicode


def test_lone_surrogates_read_as_ordinary_characters():
    texts = [
        "\ud800",
        "<answer>0.5</answer>\ud800",
        "<answer>\udfff0.5</answer>",
        "<think>\ud800</think><answer>1</answer>",
    ]
    np.testing.assert_array_equal(rewards.parse_scores(texts), [np.nan, 0.5, np.nan, 1.0])
    np.testing.assert_array_equal(rewards.format_reward(texts), [0.0, 0.0, 0.0, 1.0])
    out = rewards.rapo({"completions": [texts[:2], texts[2:]], "gt": [0.5, 1.0]})
    np.testing.assert_array_equal(out.scores, [np.nan, 0.5, np.nan, 1.0])
    # Same answers as for the text with another non-tag character in place of each surrogate.
    plain = [t.replace("\ud800", "?").replace("\udfff", "?") for t in texts]
    np.testing.assert_array_equal(rewards.parse_scores(plain), rewards.parse_scores(texts))


# ---------------------------------------------------------------------------------------------
# Masked arrays


MASKED = np.ma.masked_array([0.1, 0.5, 0.9], mask=[False, True, False])


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: rewards.abs_reward(MASKED, [0.1, 0.2, 0.3]), "pred"),
        (lambda: rewards.binary_reward([0.1, 0.2, 0.3], MASKED), "gt"),
        (lambda: rewards.rank_reward(MASKED, [0.2, 0.4, 0.6], num_generations=1), "pred"),
        (lambda: rewards.group_advantages(MASKED, num_generations=3), "rewards"),
        (lambda: rewards.rapo({"pred": MASKED, "gt": [0.2]}, num_generations=3), "pred"),
        (lambda: rewards.rapo({"pred": [0.1, 0.2, 0.3], "gt": MASKED}, group_ids=[0, 1, 2]), "gt"),
        (
            lambda: rewards.rapo(
                {"pred": [0.1, 0.2, 0.3], "gt": [0.1, 0.2, 0.3]},
                group_ids=np.ma.masked_array([0, 1, 2], mask=[0, 0, 1]),
            ),
            "group_ids",
        ),
        (lambda: metrics.plcc(MASKED, [0.1, 0.2, 0.3]), "pred"),
        (lambda: metrics.srcc([0.1, 0.2, 0.3], MASKED), "gt"),
        (lambda: metrics.krcc(MASKED, [0.1, 0.2, 0.3]), "pred"),
        (lambda: metrics.evaluate(MASKED, [0.1, 0.2, 0.3], nan_policy="omit"), "pred"),
    ],
)
def test_masked_entries_are_rejected_by_name(call, name):
    with pytest.raises(ValueError, match=rf"`{name}` is a masked array with 1 masked entries"):
        call()


def test_masked_arrays_without_masked_entries_are_plain_arrays():
    unmasked = np.ma.masked_array([0.1, 0.5, 0.9], mask=False)
    assert metrics.plcc(unmasked, [0.1, 0.2, 0.4]) == metrics.plcc([0.1, 0.5, 0.9], [0.1, 0.2, 0.4])
    assert np.array_equal(
        rewards.abs_reward(unmasked, [0.1, 0.2, 0.3]), rewards.abs_reward([0.1, 0.5, 0.9], [0.1, 0.2, 0.3])
    )


def test_the_suggested_fill_works():
    filled = MASKED.filled(np.nan)
    assert metrics.evaluate(filled, [0.1, 0.2, 0.3], nan_policy="omit").n == 2
    assert rewards.rapo({"pred": filled, "gt": [0.2]}, num_generations=3).num_unparseable == 1
