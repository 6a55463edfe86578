"""Score parsing and the format reward against the regex reference in `reference.py`."""

from __future__ import annotations

import numpy as np
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

from aesr1 import rewards

# Texts assembled from the pieces that matter (tags, numbers, whitespace, near-misses) so that
# random draws hit the interesting cases often.
pieces = st.sampled_from(
    [
        "<answer>",
        "</answer>",
        "<think>",
        "</think>",
        "<answer",
        "</answer",
        "<",
        ">",
        "/",
        "0",
        "1",
        "0.5",
        ".25",
        "1.0",
        "0.",
        "+0.3",
        "-0",
        "-0.1",
        "1.5",
        "2",
        "e-1",
        "nan",
        "inf",
        " ",
        "\n",
        "\t",
        "\x0b",
        "\x0c",
        "\r",
        "\xa0",
        "\u0661",
        "a",
        "score",
        "é",
    ]
)
texts = st.one_of(
    st.lists(pieces, max_size=14).map("".join),
    st.text(max_size=40),
    st.builds(
        lambda pre, think, sep, number, post: (
            f"{pre}<think>{think}</think>{sep}<answer>{number}</answer>{post}"
        ),
        st.sampled_from(["", " ", "\n", "x"]),
        st.text(max_size=10),
        st.sampled_from(["", "\n", " x "]),
        st.one_of(st.floats(-0.5, 1.5).map(repr), st.sampled_from(["0.85", " 0.7 ", "1", "high", "0.5 0.6"])),
        st.sampled_from(["", "\n", ".", "<answer>0.2</answer>"]),
    ),
)


@settings(max_examples=500, deadline=None)
@given(batch=st.lists(texts, min_size=1, max_size=20))
def test_scores_match_reference(batch):
    got = rewards.parse_scores(batch)
    want = np.array([ref.parse_score(t) for t in batch])
    assert np.array_equal(got, want, equal_nan=True), list(zip(batch, got, want, strict=True))
    assert not np.any(np.signbit(got[~np.isnan(got)]))  # -0 is reported as 0


@settings(max_examples=500, deadline=None)
@given(batch=st.lists(texts, min_size=1, max_size=20))
def test_format_reward_matches_reference(batch):
    got = rewards.format_reward(batch)
    want = np.array([ref.format_reward(t) for t in batch])
    assert np.array_equal(got, want), list(zip(batch, got, want, strict=True))


def test_large_batches_parse_in_parallel_like_small_ones():
    batch = [f"<think>{'x' * (i % 50)}</think><answer>0.{i % 100:02d}</answer>" for i in range(5000)]
    batch[17] = "<answer>oops</answer>"
    got = rewards.parse_scores(batch)
    assert np.array_equal(got, np.array([ref.parse_score(t) for t in batch]), equal_nan=True)
    assert np.array_equal(rewards.format_reward(batch), np.array([ref.format_reward(t) for t in batch]))


def test_documented_examples():
    assert rewards.parse_scores(["<think>x</think><answer>0.85</answer>"])[0] == 0.85
    assert rewards.parse_scores(["<answer>0.3</answer> <answer>n/a</answer>"])[0] == 0.3
    assert np.isnan(rewards.parse_scores(["<answer>7/10</answer>"])[0])
    assert rewards.format_reward(
        ["<think>a</think>\n<answer>0.5</answer>", "<answer>0.5</answer>"]
    ).tolist() == [1.0, 0.0]
