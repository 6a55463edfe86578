"""Golden vectors (tests/golden/golden.json), shared with the Rust tests (rust/core/tests/golden.rs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aesr1 import metrics, rewards

GOLDEN = json.loads((Path(__file__).parent / "golden" / "golden.json").read_text())


def arr(values) -> np.ndarray:
    """JSON lists with null for NaN as a float array."""
    return np.array(values, dtype=object).astype(float) if values is not None else np.nan


def test_golden_floats_round_trip_exactly():
    text = json.dumps(GOLDEN["rewards"][0]["expected"]["total"])
    assert json.loads(text) == GOLDEN["rewards"][0]["expected"]["total"]


@pytest.mark.parametrize("case", GOLDEN["rewards"], ids=lambda c: c["name"])
def test_reward_cases(case):
    pred, gt = arr(case["pred"]), arr(case["gt"])
    out = rewards.rapo(
        {"pred": pred, "gt": gt},
        weights=case["weights"],
        sigma=case["sigma"],
        eps=case["eps"],
        gamma=case["gamma"],
        threshold=case["threshold"],
        ties=case["ties"],
    )
    for name, expected in case["expected"].items():
        np.testing.assert_allclose(
            getattr(out, name), arr(expected).ravel(), rtol=0, atol=1e-12, err_msg=name
        )


def test_scattered_groups_case():
    case = GOLDEN["scattered"]
    out = rewards.rapo(
        {"pred": arr(case["pred_flat"]), "gt": arr(case["gt_per_completion"])}, group_ids=case["group_ids"]
    )
    for name, expected in case["expected"].items():
        np.testing.assert_allclose(getattr(out, name), arr(expected), rtol=0, atol=1e-12, err_msg=name)


def test_parse_cases():
    texts = [c["text"] for c in GOLDEN["parse"]]
    np.testing.assert_array_equal(rewards.parse_scores(texts), arr([c["score"] for c in GOLDEN["parse"]]))
    np.testing.assert_array_equal(rewards.format_reward(texts), [c["format"] for c in GOLDEN["parse"]])


@pytest.mark.parametrize("case", GOLDEN["metrics"], ids=lambda c: c["name"])
def test_metric_cases(case):
    x, y = arr(case["pred"]), arr(case["gt"])
    result = metrics.evaluate(x, y)
    assert result.krcc == case["krcc"]
    assert abs(result.srcc - case["srcc"]) <= 1e-12 * abs(case["srcc"])
    assert abs(result.plcc - case["plcc"]) <= 1e-12 * abs(case["plcc"])
