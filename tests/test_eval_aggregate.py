"""The per-image prediction shared by evaluation, `Scorer` and the held-out checks of training."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aesr1.eval import Prediction
from aesr1.eval.aggregate import mean_scores, parsed_scores


def answer(score: str) -> str:
    return f"<think>ok</think><answer>{score}</answer>"


def test_mean_of_the_parsed_scores_against_a_float64_reference():
    first = ["0.19", "0.08", "0.86", "0.86", "0.88", "0.47", "0.27", "0.01", "0.65"]
    third = ["0.7", "x", "0.35", "1", "<answer>1.5</answer>", "0.05", "y", "0.5", "0.25"]
    completions = [
        [answer(text) for text in first],
        ["nothing", "<answer>1.5</answer>", "<answer>", "", "a", "b", "c", "d", "e"],
        [answer(text) if text[0].isdigit() else text for text in third],
    ]
    scores = parsed_scores(completions)
    nan = math.nan
    want_scores = np.array([[float(text) for text in first], [nan] * 9,
                            [0.7, nan, 0.35, 1.0, nan, 0.05, nan, 0.5, 0.25]])  # fmt: skip
    np.testing.assert_array_equal(scores, want_scores)
    assert scores.dtype == np.float64
    # Python's `sum` adds left to right
    want = [sum(float(text) for text in first) / 9, nan, sum([0.7, 0.35, 1.0, 0.05, 0.5, 0.25]) / 6]
    got = mean_scores(scores)
    assert got.dtype == np.float64
    assert got[0] == want[0] and math.isnan(got[1]) and got[2] == want[2]
    assert want[0] != scores[:1].sum(axis=1)[0] / 9  # numpy's pairwise sum rounds differently here
    prediction = Prediction.from_scores("set", "a", "/a.jpg", 0.5, completions[2], scores[2].tolist())
    assert prediction.pred == want[2] and prediction.scores == [
        0.7,
        None,
        0.35,
        1.0,
        None,
        0.05,
        None,
        0.5,
        0.25,
    ]
    assert Prediction.from_scores("set", "b", "/b.jpg", 0.5, completions[1], scores[1].tolist()).pred is None


def test_shapes_are_checked():
    assert parsed_scores([]).shape == (0, 0)
    with pytest.raises(ValueError, match="same number of completions"):
        parsed_scores([["a"], ["b", "c"]])
    with pytest.raises(ValueError, match="images, samples"):
        mean_scores(np.zeros(3))
