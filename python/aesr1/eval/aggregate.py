"""An image's prediction from its sampled completions: the mean of the scores that parse.

Evaluation, `aesr1.Scorer` and the held-out checks during training all predict this way, so the
same completions give the same number everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def parsed_scores(completions: Sequence[Sequence[str]]) -> np.ndarray:
    """[images, samples] float64 score of each image's completions, NaN where none parses (see
    `aesr1.rewards.parse_scores`); every image needs the same number of completions."""
    from aesr1.rewards import parse_scores

    sizes = {len(samples) for samples in completions}
    if len(sizes) > 1:
        raise ValueError(f"every image needs the same number of completions, got {sorted(sizes)}")
    flat = [text for samples in completions for text in samples]
    samples = sizes.pop() if sizes else 0
    return np.asarray(parse_scores(flat), dtype=np.float64).reshape(len(completions), samples)


def mean_scores(scores: np.ndarray) -> np.ndarray:
    """Each row's mean of its scores that are not NaN, NaN for a row without any.

    Summed left to right, as Python's `sum` over one image's parsed scores is (the predictions kept
    in evaluation caches), so a resumed evaluation agrees bit for bit with a fresh one.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [images, samples], got shape {scores.shape}")
    parsed = ~np.isnan(scores)
    total = np.zeros(len(scores))
    for column, ok in zip(scores.T, parsed.T, strict=True):
        total += np.where(ok, column, 0.0)
    counts = parsed.sum(axis=1)
    return np.where(counts > 0, total / np.maximum(counts, 1), np.nan)
