"""The step log of training (`aesr1.train.tracking.MetricsLogger`)."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from aesr1.train.tracking import MetricsLogger, read_metrics


def test_non_finite_metrics_are_logged_as_null(tmp_path):
    """Held-out correlations are NaN when fewer than two images parse; the log stays strict JSON."""
    logger = MetricsLogger(tmp_path, "rapo", tensorboard=False)
    logger.log(3, {"eval/plcc": math.nan, "eval/srcc": np.float64("nan"), "loss": torch.tensor(math.inf),
                   "eval/scored": 1.0, "reward/total": np.float32(0.5)})  # fmt: skip
    logger.close()

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    lines = (tmp_path / "rapo_metrics.jsonl").read_text().splitlines()
    assert [json.loads(line, parse_constant=refuse) for line in lines] == read_metrics(
        tmp_path / "rapo_metrics.jsonl"
    )
    (record,) = read_metrics(tmp_path / "rapo_metrics.jsonl")
    assert record["step"] == 3 and record["eval/plcc"] is None and record["eval/srcc"] is None
    assert record["loss"] is None and record["eval/scored"] == 1.0 and record["reward/total"] == 0.5
