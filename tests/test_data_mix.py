"""The 2:2:1 training mix, balanced bin sampling, normalisation and seeded splits (property tests)."""

from __future__ import annotations

import math
import random
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
from fixtures_data import build_ava, build_flickr_aes, build_tad66k
from hypothesis import given, settings
from hypothesis import strategies as st

from aesr1.data import (
    PAPER_MIX_RATIO,
    ScoredImage,
    ScoreRange,
    balance_bins,
    bin_counts,
    mix_datasets,
    paper_training_mix,
)
from aesr1.data.mix import quotas
from aesr1.data.normalization import parse_score_range, vote_mean_std, vote_mean_std_rows
from aesr1.data.splits import seeded_test_ids


def records(source: str, n: int, seed: int = 0) -> list[ScoredImage]:
    rng = random.Random(seed)
    return [ScoredImage(f"/img/{source}/{i}.jpg", rng.random(), source, f"{source}-{i}") for i in range(n)]


# ---------------------------------------------------------------------------------------- the mix


def test_mix_is_2_2_1_seeded_and_without_repeats():
    datasets = {
        "ava": records("ava", 400),
        "tad66k": records("tad66k", 300),
        "flickr-aes": records("flickr-aes", 100),
    }
    mix = mix_datasets(datasets, total=500, seed=3)
    assert Counter(item.source for item in mix) == {"ava": 200, "tad66k": 200, "flickr-aes": 100}
    assert len({(item.source, item.id) for item in mix}) == 500
    assert mix == mix_datasets(datasets, total=500, seed=3)
    assert mix != mix_datasets(datasets, total=500, seed=4)
    shuffled = {name: random.Random(1).sample(items, len(items)) for name, items in datasets.items()}
    assert mix == mix_datasets(shuffled, total=500, seed=3)  # input order does not matter
    assert len({item.source for item in mix[:20]}) == 3  # interleaved, not blocks


def test_mix_default_is_the_papers_15k():
    datasets = {name: records(name, 7000) for name in PAPER_MIX_RATIO}
    mix = mix_datasets(datasets)
    assert Counter(item.source for item in mix) == {"ava": 6000, "tad66k": 6000, "flickr-aes": 3000}


def test_mix_too_small_dataset():
    datasets = {
        "ava": records("ava", 50),
        "tad66k": records("tad66k", 50),
        "flickr-aes": records("flickr-aes", 5),
    }
    with pytest.raises(ValueError, match=r"datasets\['flickr-aes'\] holds 5 records but the mix needs 20"):
        mix_datasets(datasets, total=100)
    mix = mix_datasets(datasets, total=100, allow_fewer=True)
    assert Counter(item.source for item in mix) == {"ava": 40, "tad66k": 40, "flickr-aes": 5}
    with pytest.raises(ValueError, match="lacks"):
        mix_datasets({"ava": records("ava", 5)}, total=4)


@settings(max_examples=300, deadline=None)
@given(
    total=st.integers(0, 20000),
    weights=st.lists(st.integers(1, 9), min_size=1, max_size=6),
)
def test_quotas_sum_to_total_and_track_the_ratio(total, weights):
    ratio = {f"d{i}": w for i, w in enumerate(weights)}
    shares = quotas(total, ratio)
    assert sum(shares.values()) == total
    weight_sum = sum(weights)
    for name, w in ratio.items():
        exact = Fraction(total * w, weight_sum)
        assert abs(shares[name] - exact) < 1


def test_paper_training_mix_from_fixture_trees(tmp_path):
    ava, _, _ = build_ava(tmp_path / "AVA", n=40)  # 30 train
    tad, _ = build_tad66k(tmp_path / "TAD66K", n_train=30, n_test=3)
    flickr, _ = build_flickr_aes(tmp_path / "FLICKR-AES", n=30)  # 27 train (seeded 9:1)
    roots = {"ava": ava, "tad66k": tad, "flickr": flickr}
    mix = paper_training_mix(roots, total=50, seed=0)
    assert Counter(item.source for item in mix) == {"ava": 20, "tad66k": 20, "flickr-aes": 10}
    tad_test = {f"test_{i:03d}.jpg" for i in range(3)}
    assert not tad_test & {item.id for item in mix if item.source == "tad66k"}  # train split only
    assert mix == paper_training_mix(roots, total=50, seed=0)
    with pytest.raises(ValueError, match="roots lacks"):
        paper_training_mix({"ava": ava}, total=10)


# ---------------------------------------------------------------------------------- bin balancing


def test_balance_bins_equal_counts_and_seeded():
    items = records("ava", 300)
    counts = bin_counts(items)
    balanced = balance_bins(items, seed=1)
    assert bin_counts(balanced) == dict.fromkeys(counts, min(counts.values()))
    assert balanced == balance_bins(list(reversed(items)), seed=1)
    assert len({item.id for item in balanced}) == len(balanced)
    assert bin_counts(balance_bins(items, per_bin=20)) == {"bad": 20, "fair": 20, "good": 20}


def test_balance_bins_short_bin():
    items = [ScoredImage(f"/{i}", s, "x", str(i)) for i, s in enumerate([0.1] * 10 + [0.5] * 10 + [0.9] * 3)]
    assert bin_counts(balance_bins(items, per_bin=5)) == {"bad": 5, "fair": 5, "good": 3}
    with pytest.raises(ValueError, match="bin 'good' holds 3 records"):
        balance_bins(items, per_bin=5, strict=True)
    with pytest.raises(ValueError, match="per_bin"):
        balance_bins(items, per_bin=-1)


def test_bin_edges_follow_appendix_e2():
    items = [ScoredImage(f"/{s}", s, "x", str(s)) for s in (0.0, 0.399, 0.4, 0.699, 0.7, 1.0)]
    assert bin_counts(items) == {"bad": 2, "fair": 2, "good": 2}


# ------------------------------------------------------------------------- normalisation properties


@settings(max_examples=500, deadline=None)
@given(
    lo=st.floats(-1e3, 1e3, allow_nan=False),
    width=st.floats(1e-3, 1e3, allow_nan=False),
    t=st.floats(0.0, 1.0),
    std_t=st.floats(0.0, 1.0),
)
def test_normalize_matches_float64_reference(lo, width, t, std_t):
    hi = lo + width
    if not lo < hi:
        return
    score_range = ScoreRange(lo, hi)
    score = lo + t * (hi - lo)
    score = min(max(score, lo), hi)
    expected = (np.float64(score) - lo) / (np.float64(hi) - lo)
    assert score_range.normalize(score) == pytest.approx(float(np.clip(expected, 0, 1)), abs=1e-12)
    std = std_t * width
    assert score_range.normalize_std(std) == pytest.approx(std / (hi - lo), rel=1e-12, abs=1e-15)


def test_score_range_parsing_and_errors():
    assert parse_score_range("1..10") == ScoreRange(1, 10)
    assert parse_score_range((0, 100)) == ScoreRange(0, 100)
    assert parse_score_range("-3..3") == ScoreRange(-3, 3)
    with pytest.raises(ValueError, match="lo..hi"):
        parse_score_range("1-10")
    with pytest.raises(ValueError, match="lo < hi"):
        ScoreRange(5, 1)
    with pytest.raises(TypeError, match="score_range"):
        parse_score_range(3)
    with pytest.raises(ValueError, match="outside the stated range"):
        ScoreRange(1, 5).normalize(5.5)
    assert ScoreRange(1, 5).normalize_std(float("nan")) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=10, max_size=10).filter(lambda c: sum(c) > 0))
def test_vote_mean_std_matches_numpy(counts):
    levels = np.arange(1, 11, dtype=np.float64)
    mean, std = vote_mean_std(counts, range(1, 11))
    ref_mean = np.average(levels, weights=counts)
    ref_std = math.sqrt(np.average((levels - ref_mean) ** 2, weights=counts))
    assert mean == pytest.approx(ref_mean, abs=1e-12) and std == pytest.approx(ref_std, abs=1e-12)
    rows_mean, rows_std = vote_mean_std_rows([counts, counts[::-1]], range(1, 11))
    assert rows_mean[0] == pytest.approx(ref_mean, abs=1e-12) and rows_std[0] == pytest.approx(
        ref_std, abs=1e-12
    )
    assert rows_mean[1] == pytest.approx(11 - ref_mean, abs=1e-12) and rows_std[1] == pytest.approx(
        ref_std, abs=1e-12
    )


# ------------------------------------------------------------------------------ seeded split properties


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 400), seed=st.integers(0, 2**31), fraction=st.floats(0.01, 0.99))
def test_seeded_split_sizes_and_determinism(n, seed, fraction):
    ids = [f"img{i}" for i in range(n)]
    test = seeded_test_ids(ids, fraction, seed)
    assert test <= set(ids)
    if n < 2:
        assert test == set()
    else:
        assert len(test) == min(n - 1, max(1, round(n * fraction)))
    assert test == seeded_test_ids(reversed(ids), fraction, seed)


def test_seeded_split_is_nine_to_one():
    ids = [str(i) for i in range(1000)]
    test = seeded_test_ids(ids)
    assert len(test) == 100
    assert test != seeded_test_ids(ids, seed=1)
    with pytest.raises(ValueError, match="test_fraction"):
        seeded_test_ids(ids, 1.0)
    with pytest.raises(TypeError, match="seed"):
        seeded_test_ids(ids, 0.1, seed=1.5)
