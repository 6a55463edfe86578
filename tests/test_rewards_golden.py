"""Golden vectors (tests/golden/golden.json), shared with the Rust tests (rust/core/tests/golden.rs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aesr1 import metrics, rewards

GOLDEN_TEXT = (Path(__file__).parent / "golden" / "golden.json").read_text()
GOLDEN = json.loads(GOLDEN_TEXT)


def arr(values) -> np.ndarray:
    """JSON lists with null for NaN as a float array."""
    return np.array(values, dtype=object).astype(float) if values is not None else np.nan


def golden_float_tokens() -> list[str]:
    """The text of every non-integer number in golden.json, in file order."""
    tokens: list[str] = []

    def keep(token: str) -> float:
        tokens.append(token)
        return float(token)

    json.loads(GOLDEN_TEXT, parse_float=keep)
    return tokens


def answer_text(value: float) -> str:
    """`value` as the shortest positional decimal that reads back as the same double."""
    return np.format_float_positional(value, unique=True, trim="0")


def bits(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).view(np.uint64)


def test_golden_floats_round_trip_exactly():
    """Every golden float in [0, 1], written as the decimal text golden.json holds for it (the
    shortest positional form where the file uses an exponent, which answers may not), is read by the
    native parser (`aesr1._core.parse_scores`) as the same 64-bit double Python reads. That needs a
    correctly rounded parser and an f64 path through the binding: the values include 16- and 17-digit
    rewards and decimals such as 0.3 that float32 cannot hold."""
    tokens = golden_float_tokens()
    values = np.array([float(t) for t in tokens])
    unit = values[(values >= 0) & (values <= 1)]
    assert len(unit) > 1000
    assert not np.signbit(unit).any()  # the parser reads -0 as +0
    assert (unit.astype(np.float32).astype(np.float64) != unit).sum() > len(unit) // 2
    texts = [answer_text(v) for v in unit]
    in_file = {t for t in tokens if "e" not in t}
    assert [t for t in texts if "e" not in repr(float(t)) and t not in in_file] == []

    parsed = rewards.parse_scores([f"<think>x</think><answer>{t}</answer>" for t in texts])
    assert parsed.dtype == np.float64
    np.testing.assert_array_equal(bits(parsed), bits(unit))


@pytest.mark.parametrize("case", GOLDEN["rewards"], ids=lambda c: c["name"])
def test_golden_predictions_round_trip_through_completions(case):
    """`rapo` on completions whose answers are a case's golden predictions (no answer for NaN)
    returns those predictions bit for bit as `scores`, and every reward equal to `rapo` on the float64
    predictions themselves."""
    pred, gt = arr(case["pred"]), arr(case["gt"])
    completions = [
        [
            f"<think>x</think><answer>{answer_text(v)}</answer>" if not np.isnan(v) else "no answer"
            for v in row
        ]
        for row in pred
    ]
    options = {k: case[k] for k in ("weights", "sigma", "eps", "gamma", "threshold", "ties")}
    from_text = rewards.rapo({"completions": completions, "gt": gt}, **options)
    from_pred = rewards.rapo({"pred": pred, "gt": gt}, **options)
    scores, want = from_text.scores, pred.ravel()
    np.testing.assert_array_equal(np.isnan(scores), np.isnan(want))
    np.testing.assert_array_equal(bits(scores[~np.isnan(want)]), bits(want[~np.isnan(want)]))
    assert from_text.num_unparseable == from_pred.num_unparseable == int(np.isnan(pred).sum())
    for name in ("rank", "abs", "binary", "total", "advantages"):
        np.testing.assert_array_equal(
            bits(getattr(from_text, name)), bits(getattr(from_pred, name)), err_msg=name
        )


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
