"""Splits: official ones where a dataset has them, else a seeded 9:1 train/test split (Appendix C)."""

from __future__ import annotations

import random
from collections.abc import Iterable

#: Split names `load_dataset` accepts. "val" exists only for datasets with an official validation set.
SPLITS = ("train", "val", "test", "all")

#: Appendix C: datasets without an official split are partitioned 9:1 with a fixed seed.
DEFAULT_TEST_FRACTION = 0.1


def check_split(split: str) -> str:
    if not isinstance(split, str):
        raise TypeError(f"split must be a string, got {type(split).__name__}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def seeded_test_ids(
    ids: Iterable[str], test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0
) -> set[str]:
    """The ids of the test part of a seeded split.

    Depends only on the set of ids, the fraction and the seed (not on file order): the sorted ids are
    shuffled with `random.Random(seed)` and the first round(n * test_fraction) (at least 1 and at most
    n - 1 when n >= 2) form the test set.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)):
        raise TypeError(f"test_fraction must be a number, got {test_fraction!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    order = sorted(set(ids))
    if len(order) < 2:
        return set()
    random.Random(seed).shuffle(order)
    n_test = min(len(order) - 1, max(1, round(len(order) * test_fraction)))
    return set(order[:n_test])
