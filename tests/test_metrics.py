"""PLCC, SRCC and Kendall's tau-b against SciPy."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from aesr1 import metrics

RTOL = 1e-12


def close(actual: float, expected: float) -> bool:
    """Within 1e-12 relative. A correlation near 0 is itself a cancellation of O(1) terms, so
    there 1e-12 of the terms' scale (absolute 1e-15 below |r| = 1e-3) is what can be asked."""
    if np.isnan(expected):
        return bool(np.isnan(actual))
    return abs(actual - expected) <= RTOL * max(abs(expected), 1e-3)


# Series with ties (grids), extremes, duplicates and a wide range of magnitudes.
values = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, allow_subnormal=False).filter(
        lambda v: v == 0 or abs(v) > 1e-200
    ),
    st.integers(-5, 5).map(float),
    st.integers(0, 100).map(lambda v: v / 100),
)


@st.composite
def pairs(draw):
    n = draw(st.integers(2, 60))
    x = draw(st.lists(values, min_size=n, max_size=n))
    if draw(st.booleans()):
        y = draw(st.lists(values, min_size=n, max_size=n))
    else:  # correlated
        noise = draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n))
        y = [a * draw(st.sampled_from([1.0, -2.0, 0.5])) + e for a, e in zip(x, noise, strict=True)]
    return np.array(x), np.array(y)


@st.composite
def large_pairs(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(100, 20_000))
    x = rng.standard_normal(n) * draw(st.sampled_from([1e-3, 1.0, 1e4]))
    y = x * draw(st.sampled_from([0.0, 0.3, -1.0])) + rng.standard_normal(n)
    if draw(st.booleans()):
        x, y = np.round(x, 1), np.round(y, 1)
    return x, y


all_pairs = st.one_of(pairs(), pairs(), pairs(), large_pairs())


def scipy_quiet(fn, x, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(x, y).statistic)


def ours_quiet(fn, x, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(x, y, **kw)


@settings(max_examples=400, deadline=None)
@given(xy=all_pairs)
def test_kendall_tau_b_is_bit_identical_to_scipy(xy):
    x, y = xy
    got, want = ours_quiet(metrics.krcc, x, y), scipy_quiet(stats.kendalltau, x, y)
    assert (np.isnan(got) and np.isnan(want)) or got == want, (got, want)


@settings(max_examples=400, deadline=None)
@given(xy=all_pairs)
def test_spearman_matches_scipy(xy):
    x, y = xy
    got, want = ours_quiet(metrics.srcc, x, y), scipy_quiet(stats.spearmanr, x, y)
    assert close(got, want), (got, want)


@settings(max_examples=400, deadline=None)
@given(xy=all_pairs)
def test_pearson_matches_scipy(xy):
    x, y = xy
    got, want = ours_quiet(metrics.plcc, x, y), scipy_quiet(stats.pearsonr, x, y)
    assert close(got, want), (got, want)


@settings(max_examples=200, deadline=None)
@given(
    xy=pairs(),
    holes=st.lists(st.sampled_from([np.nan, np.inf, -np.inf]), min_size=1, max_size=4),
    seed=st.integers(0, 999),
)
def test_omit_drops_non_finite_pairs(xy, holes, seed):
    x, y = xy
    rng = np.random.default_rng(seed)
    x, y = np.append(x, holes), np.append(y, rng.random(len(holes)))
    perm = rng.permutation(len(x))
    x, y = x[perm], y[perm]
    keep = np.isfinite(x) & np.isfinite(y)
    result = ours_quiet(metrics.evaluate, x, y, nan_policy="omit")
    assert result.n == keep.sum()
    assert (result.krcc == scipy_quiet(stats.kendalltau, x[keep], y[keep])) or np.isnan(result.krcc)
    assert close(result.srcc, scipy_quiet(stats.spearmanr, x[keep], y[keep]))
    assert close(result.plcc, scipy_quiet(stats.pearsonr, x[keep], y[keep]))
    with pytest.raises(ValueError, match="must be finite"):
        metrics.evaluate(x, y)


def test_evaluate_matches_single_metrics():
    rng = np.random.default_rng(0)
    x = rng.random(1000)
    y = np.round(x + 0.2 * rng.standard_normal(1000), 2)
    result = metrics.evaluate(x, y)
    assert (result.plcc, result.srcc, result.krcc, result.n) == (
        metrics.plcc(x, y),
        metrics.srcc(x, y),
        metrics.krcc(x, y),
        1000,
    )
    assert result.as_dict()["krcc"] == result.krcc


def test_constant_input_is_nan_with_a_warning():
    for fn in (metrics.plcc, metrics.srcc, metrics.krcc):
        with pytest.warns(metrics.ConstantInputWarning):
            assert np.isnan(fn([0.5, 0.5, 0.5], [0.1, 0.2, 0.3]))
    with pytest.warns(metrics.ConstantInputWarning):
        assert np.isnan(metrics.evaluate([1.0, 2.0], [3.0, 3.0]).plcc)


def test_two_points():
    assert metrics.plcc([0.0, 1.0], [5.0, 2.0]) == -1.0
    assert metrics.srcc([0.0, 1.0], [2.0, 5.0]) == 1.0
    assert metrics.krcc([0.0, 1.0], [2.0, 5.0]) == 1.0


@pytest.mark.parametrize(
    ("call", "error", "name"),
    [
        (lambda: metrics.plcc([1.0], [2.0]), ValueError, "pred"),
        (lambda: metrics.srcc([], []), ValueError, "pred"),
        (lambda: metrics.krcc([1.0, 2.0], [1.0, 2.0, 3.0]), ValueError, "gt"),
        (lambda: metrics.plcc([1.0, np.nan], [1.0, 2.0]), ValueError, "pred"),
        (lambda: metrics.plcc([1.0, 2.0], [1.0, np.inf]), ValueError, "gt"),
        (lambda: metrics.plcc([[1.0, 2.0]], [1.0, 2.0]), ValueError, "pred"),
        (lambda: metrics.plcc(["a", "b"], [1.0, 2.0]), TypeError, "pred"),
        (lambda: metrics.plcc([1.0, 2.0], "12"), TypeError, "gt"),
        (lambda: metrics.plcc([1.0, 2.0], [1.0, 2.0], nan_policy="propagate"), ValueError, "nan_policy"),
        (
            lambda: metrics.evaluate([np.nan, np.inf, 2.0], [1.0, 1.0, 2.0], nan_policy="omit"),
            ValueError,
            "pred",
        ),
    ],
)
def test_bad_input_names_the_argument(call, error, name):
    with pytest.raises(error, match=re.escape(f"`{name}`")) as info:
        call()
    assert type(info.value) is error


def test_million_points_against_scipy():
    rng = np.random.default_rng(1)
    x = rng.random(1_000_000)
    y = np.round(x + 0.3 * rng.standard_normal(x.size), 3)
    assert metrics.krcc(x, y) == stats.kendalltau(x, y).statistic
    assert close(metrics.srcc(x, y), stats.spearmanr(x, y).statistic)
    assert close(metrics.plcc(x, y), stats.pearsonr(x, y).statistic)
