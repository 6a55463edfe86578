"""Golden vectors (tests/golden/golden.json), shared with the Rust tests (rust/core/tests/golden.rs)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from aesr1 import metrics, rewards

GOLDEN_TEXT = (Path(__file__).parent / "golden" / "golden.json").read_text()
GOLDEN = json.loads(GOLDEN_TEXT)
CARGO_TOML = Path(__file__).resolve().parents[1] / "Cargo.toml"


def arr(values) -> np.ndarray:
    """JSON lists with null for NaN as a float array."""
    return np.array(values, dtype=object).astype(float) if values is not None else np.nan


def test_golden_floats_round_trip_exactly():
    """Every float in golden.json is the shortest text of its double (Python's repr), so every
    correctly rounded reader gets the same bits: Python's json here, and serde_json in
    rust/core/tests/golden.rs, which the workspace builds with `float_roundtrip` (without it serde_json
    can be one ulp off, and the Rust test's bit-exact checks, krcc and parsed scores, would compare
    other doubles). The bit-exact cases below compare the Rust core's outputs with these doubles."""
    tokens: list[str] = []

    def keep(token: str) -> float:
        tokens.append(token)
        return float(token)

    assert json.loads(GOLDEN_TEXT, parse_float=keep) == GOLDEN
    assert len(tokens) > 100
    assert [t for t in tokens if repr(float(t)) != t] == []
    serde = re.search(r"^serde_json\s*=.*$", CARGO_TOML.read_text(), re.MULTILINE)
    assert serde is not None and '"float_roundtrip"' in serde.group(0), "serde_json needs float_roundtrip"


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
