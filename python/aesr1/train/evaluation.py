"""Held-out PLCC/SRCC of a policy during and after training (paper §4.1 metrics).

Each image's prediction is the mean of its parsed scores over `eval.num_samples` completions
(greedy when `eval.temperature == 0`). Correlations are computed over the images with at least one
parseable completion, and the share of unparseable completions is reported beside them (as
`aesr1.eval` does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from aesr1.data.records import ScoredImage
from aesr1.eval.aggregate import mean_scores, parsed_scores
from aesr1.train.config import HeldOutEvalConfig


@dataclass
class HeldOutResult:
    """Correlations of one evaluation.

    Attributes:
        plcc / srcc: Pearson / Spearman correlation with the ground truth (NaN when fewer than two images
            were scored or the predictions are constant).
        parse_failure_rate: share of completions whose score could not be parsed.
        images / scored: images evaluated, and those with at least one parsed score.
        pred / gt: per-image mean prediction (NaN where nothing parsed) and ground truth.
        completions: the sampled completions per image.
    """

    plcc: float
    srcc: float
    parse_failure_rate: float
    images: int
    scored: int
    pred: np.ndarray = field(repr=False)
    gt: np.ndarray = field(repr=False)
    completions: list[list[str]] = field(default_factory=list, repr=False)

    def metrics(self) -> dict[str, float]:
        return {"plcc": self.plcc, "srcc": self.srcc, "parse_failure_rate": self.parse_failure_rate,
                "scored": float(self.scored)}  # fmt: skip


def plcc_srcc(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """(PLCC, SRCC) over the finite predictions via `aesr1.metrics`; NaN when undefined."""
    import warnings

    from aesr1 import metrics

    ok = np.isfinite(pred)
    if ok.sum() < 2 or np.ptp(pred[ok]) == 0:
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(metrics.plcc(pred[ok], gt[ok])), float(metrics.srcc(pred[ok], gt[ok]))


def evaluate_policy(
    model,
    processor,
    items: Sequence[ScoredImage],
    config: HeldOutEvalConfig,
    *,
    accelerator=None,
    seed: int = 0,
    progress: bool = False,
) -> HeldOutResult:
    """Score `items` with `model` and correlate with their ground truth (all processes call together)."""
    from aesr1.generation import generate_completions, suppressed_tokens

    world = 1 if accelerator is None else accelerator.num_processes
    rank = 0 if accelerator is None else accelerator.process_index
    per = math.ceil(len(items) / world)
    local = list(items[rank * per : (rank + 1) * per])
    greedy = config.temperature == 0
    was_training = model.training
    model.eval()
    with suppressed_tokens(model, processor):
        texts = generate_completions(
            model, processor, [i.image for i in local], num_samples=config.num_samples,
            temperature=config.temperature if not greedy else 1.0, do_sample=not greedy,
            max_new_tokens=config.max_completion_length, batch_size=config.batch_size,
            seed=seed + 7919 * rank, progress=progress,
        ) if local else []  # fmt: skip
    if was_training:
        model.train()
    if world > 1:
        from accelerate.utils import gather_object

        texts = [row for part in gather_object([texts]) for row in part]
    scores = parsed_scores(texts)
    parsed = ~np.isnan(scores)
    pred = mean_scores(scores)
    gt = np.asarray([i.score for i in items], dtype=np.float64)
    plcc, srcc = plcc_srcc(pred, gt)
    return HeldOutResult(
        plcc=plcc,
        srcc=srcc,
        parse_failure_rate=float(1.0 - parsed.mean()) if parsed.size else math.nan,
        images=len(items),
        scored=int((~np.isnan(pred)).sum()),
        pred=pred,
        gt=gt,
        completions=texts,
    )
