"""Regenerate the golden vectors read by the Rust tests (rust/core/tests/golden.rs) and the Python
tests (tests/test_rewards_golden.py): `python tests/golden/make_golden.py`.

Expected rewards come from the float64 reference (`tests/reference.py`, SciPy's ndtr), metrics
from SciPy itself. Floats are written as JSON numbers with Python's shortest round-trip repr, so
they parse back to the same doubles (serde_json with `float_roundtrip`, Python's json); NaN is
written as null.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import reference as ref  # noqa: E402


def floats(a) -> list:
    """Nested lists of floats with NaN as None."""
    a = np.asarray(a, dtype=float)
    if a.ndim == 0:
        return None if np.isnan(a) else float(a)
    return [floats(v) for v in a]


def reward_case(
    name,
    pred,
    gt,
    *,
    weights=(1.0, 1.0, 0.0, 0.0),
    ties="strict",
    sigma=0.1,
    eps=1e-5,
    gamma=1e-6,
    threshold=0.1,
):
    pred, gt = np.asarray(pred, dtype=float), np.asarray(gt, dtype=float)
    want = ref.rapo(pred, gt, weights, sigma=sigma, eps=eps, gamma=gamma, threshold=threshold, ties=ties)
    return {
        "name": name,
        "pred": floats(pred),
        "gt": floats(gt),
        "weights": {"rank": weights[0], "abs": weights[1], "binary": weights[2], "format": weights[3]},
        "sigma": sigma,
        "eps": eps,
        "gamma": gamma,
        "threshold": threshold,
        "ties": ties,
        "expected": {k: floats(want[k]) for k in ("rank", "abs", "binary", "total", "advantages")},
    }


def scattered_case(rng):
    """Groups of unequal size in shuffled order, labelled by id (verl's layout)."""
    sizes = [3, 1, 4, 2]
    gt = np.array([0.81, 0.15, 0.5, 0.5])
    padded = np.full((4, 4), np.nan)
    valid = np.zeros((4, 4), dtype=bool)
    for i, k in enumerate(sizes):
        padded[i, :k] = np.round(np.clip(gt[i] + 0.1 * rng.standard_normal(k), 0, 1), 2)
        valid[i, :k] = True
    padded[2, 1] = np.nan  # one unparseable completion
    want = ref.rapo(padded, gt, valid=valid)
    labels = np.nonzero(valid)[0]
    order = rng.permutation(len(labels))
    return {
        "name": "scattered_ragged_groups",
        "pred_flat": floats(padded[valid][order]),
        "group_ids": labels[order].tolist(),
        "gt_per_completion": floats(gt[labels][order]),
        "expected": {k: floats(want[k][valid][order]) for k in ("rank", "abs", "total", "advantages")},
    }


def main() -> None:
    rng = np.random.default_rng(20250101)
    gt6 = np.round(rng.random(6), 2)
    pred6 = np.round(np.clip(gt6[:, None] + 0.1 * rng.standard_normal((6, 4)), 0, 1), 2)
    pred6[3, 2] = np.nan
    gt_ties = np.array([0.5, 0.5, 0.2, 0.8, 0.5])
    cases = [
        reward_case("paper_k4_with_unparseable", pred6, gt6),
        reward_case("ties_strict", np.round(rng.random((5, 3)), 2), gt_ties),
        reward_case("ties_half", np.round(rng.random((5, 3)), 2), gt_ties, ties="half"),
        reward_case("single_image", [[0.3, 0.35, 0.9]], [0.4]),
        reward_case("one_completion_each", np.round(rng.random((5, 1)), 2), np.round(rng.random(5), 2)),
        reward_case("identical_predictions", np.full((4, 3), 0.6), [0.1, 0.6, 0.6, 0.9]),
        reward_case(
            "saturated_tails_binary_rank",
            [[0.0, 0.0], [1.0, 1.0], [0.5, 0.5], [0.02, 0.98]],
            [0.9, 0.1, 0.5, 0.5],
            weights=(1.0, 0.0, 1.0, 0.0),
        ),
        reward_case(
            "custom_hyperparameters",
            np.round(rng.random((4, 4)), 3),
            np.round(rng.random(4), 3),
            weights=(0.5, 2.0, 0.25, 0.0),
            sigma=0.25,
            eps=1e-3,
            gamma=1e-4,
            threshold=0.05,
        ),
        reward_case("all_unparseable_image", [[np.nan, np.nan], [0.4, 0.6], [0.7, np.nan]], [0.3, 0.5, 0.7]),
    ]
    texts = [
        "<think>Good light.</think><answer>0.85</answer>",
        "<think>a</think>\n<answer> 1 </answer>\n",
        "<answer>.5</answer>",
        "<answer>0.3</answer> then <answer>high</answer>",
        "<answer>0.3</answer> then <answer>0.7</answer>",
        "<answer><answer>0.4</answer>",
        "<answer>1.5</answer>",
        "<answer>5e-1</answer>",
        "<answer>-0.0</answer>",
        "<think>x<answer>0.2</answer></think><answer>0.6</answer>",
        "no answer at all",
        "",
    ]
    parse = [{"text": t, "score": floats(ref.parse_score(t)), "format": ref.format_reward(t)} for t in texts]

    metric_cases = []
    for name, x, y in [
        ("ties_two_decimals", np.round(rng.random(50), 1), np.round(rng.random(50), 1)),
        ("correlated", rng.random(200), None),
        ("anti_correlated_small", [1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 3.0, 4.0, 1.0, 2.0]),
        ("two_points", [0.1, 0.9], [0.3, 0.2]),
    ]:
        x = np.asarray(x, dtype=float)
        y = x + 0.3 * rng.standard_normal(len(x)) if y is None else np.asarray(y, dtype=float)
        metric_cases.append(
            {
                "name": name,
                "pred": floats(x),
                "gt": floats(y),
                "plcc": float(stats.pearsonr(x, y).statistic),
                "srcc": float(stats.spearmanr(x, y).statistic),
                "krcc": float(stats.kendalltau(x, y).statistic),
            }
        )

    golden = {
        "about": "Golden vectors of aesr1's rewards and metrics; regenerate with tests/golden/make_golden.py. "
        "Rewards: float64 reference (tests/reference.py), compare within 1e-12 absolute. "
        "Metrics: SciPy; krcc bit-exact, plcc/srcc within 1e-12 relative. null = NaN.",
        "rewards": cases,
        "scattered": scattered_case(rng),
        "parse": parse,
        "metrics": metric_cases,
    }
    # One line per case keeps the file readable and diffs small.
    parts = []
    for key, value in golden.items():
        if isinstance(value, list):
            items = ",\n".join("  " + json.dumps(v) for v in value)
            parts.append(f' "{key}": [\n{items}\n ]')
        else:
            parts.append(f" {json.dumps(key)}: {json.dumps(value)}")
    (HERE / "golden.json").write_text("{\n" + ",\n".join(parts) + "\n}\n")


if __name__ == "__main__":
    main()
