"""Rewards of a generation batch: `score_rollouts` hands flat completions to `aesr1.rewards.rapo`."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from aesr1 import rewards
from aesr1.train.scoring import COMPONENTS, score_rollouts


def reward_settings(**weights):
    """The reward fields of the training config that scoring reads."""
    values = dict(rank=1.0, abs=1.0, binary=0.0, format=0.0, sigma=0.1, binary_threshold=0.1,
                  rank_scope="global", ties="strict")  # fmt: skip
    values.update(weights)
    return SimpleNamespace(**values)


@pytest.mark.parametrize(
    "weights",
    [{}, {"rank": 0.0, "binary": 1.0, "format": 0.5}, {"abs": 0.0, "ties": "half", "sigma": 0.2}],
)
def test_equal_to_rapo_on_the_nested_groups(weights):
    rng = np.random.default_rng(0)
    images, k = 6, 5
    gt = np.round(rng.random(images), 1)  # repeated ground truths exercise `ties`
    texts = [
        f"<think>t</think><answer>{score:.3f}</answer>" if rng.random() > 0.2 else "no answer"
        for score in rng.random(images * k)
    ]
    config = reward_settings(**weights)
    got = score_rollouts(texts, gt, k, config)
    want = rewards.rapo(
        {"completions": [texts[i * k : (i + 1) * k] for i in range(images)], "gt": gt},
        weights={name: getattr(config, name) for name in COMPONENTS},
        sigma=config.sigma,
        threshold=config.binary_threshold,
        ties=config.ties,
    )
    assert got.total.tobytes() == want.total.tobytes()
    assert got.advantages.tobytes() == want.advantages.tobytes()
    assert got.scores.tobytes() == want.scores.tobytes()
    for name in COMPONENTS:
        assert got.components[name].tobytes() == getattr(want, name).tobytes(), name


def test_texts_must_be_k_per_image():
    with pytest.raises(ValueError, match="expected 2 images x 3"):
        score_rollouts(["a"] * 5, [0.1, 0.2], 3, reward_settings())
