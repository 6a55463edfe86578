"""RAPO rewards and group advantages of a generation batch (Eq. 3-9), gathered across processes.

With `rank_scope="global"` every process contributes its completions and ground truths, one
`aesr1.rewards.rapo` call scores the whole generation batch (so the rank reward of Eq. 4 compares each
image with every other image of the batch, on every device), and each process keeps its own slice.
A process always holds whole groups of K completions, so the group advantages (Eq. 9) need no
communication. `rank_scope="local"` scores each process's slice alone, as the released code does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aesr1.train.config import RewardMixConfig

COMPONENTS = ("rank", "abs", "binary", "format")


@dataclass
class ScoredRollouts:
    """Rewards of this process's completions (K consecutive per image) and batch-wide statistics.

    Attributes:
        total: weighted reward per completion (what the policy maximises).
        components: each unweighted component per completion.
        scores: parsed score per completion (NaN = unparseable; it gets zero reward).
        advantages: group-normalised advantage per completion (Eq. 9).
        stats: means over the scored batch (the global one with rank_scope "global") for logging.
    """

    total: np.ndarray
    components: dict[str, np.ndarray]
    scores: np.ndarray
    advantages: np.ndarray
    stats: dict[str, float]


def reward_weights(config: RewardMixConfig) -> dict[str, float]:
    return {"rank": config.rank, "abs": config.abs, "binary": config.binary, "format": config.format}


def rapo_rewards(texts: Sequence[str], gt: np.ndarray, num_generations: int, config: RewardMixConfig):
    """One `aesr1.rewards.rapo` call on N images x K completions (`texts` image-major, `gt` per image)."""
    from aesr1 import rewards

    k = num_generations
    if len(texts) != len(gt) * k:
        raise ValueError(f"texts has {len(texts)} completions, expected {len(gt)} images x {k}")
    return rewards.rapo(
        {"completions": list(texts), "gt": np.asarray(gt, dtype=np.float64)},
        num_generations=k,
        weights=reward_weights(config),
        sigma=config.sigma,
        threshold=config.binary_threshold,
        ties=config.ties,
    )


def _stats(result, k: int) -> dict[str, float]:
    total = np.asarray(result.total, dtype=np.float64)
    scores = np.asarray(result.scores, dtype=np.float64)
    advantages = np.asarray(result.advantages, dtype=np.float64)
    stats = {"reward/total": float(total.mean()), "reward/total_std": float(total.std())}
    for name in COMPONENTS:
        stats[f"reward/{name}"] = float(np.asarray(getattr(result, name), dtype=np.float64).mean())
    groups = total.reshape(-1, k)
    stats["reward/group_std"] = float(groups.std(axis=1, ddof=1).mean()) if k > 1 else 0.0
    stats["advantage/std"] = float(advantages.std())
    stats["advantage/abs_max"] = float(np.abs(advantages).max()) if advantages.size else 0.0
    stats["unparseable"] = float(np.isnan(scores).mean())
    valid = scores[~np.isnan(scores)]
    stats["pred/mean"] = float(valid.mean()) if valid.size else float("nan")
    stats["pred/std"] = float(valid.std()) if valid.size else float("nan")
    return stats


def score_rollouts(
    texts: Sequence[str],
    gt: Sequence[float],
    num_generations: int,
    config: RewardMixConfig,
    accelerator=None,
) -> ScoredRollouts:
    """Rewards for this process's `texts` (K per image, image-major) with ground truths `gt` per image.

    Every process must call this together when `accelerator` spans several processes and
    `config.rank_scope == "global"` (it all-gathers).
    """
    k = num_generations
    gt = np.asarray(gt, dtype=np.float64)
    world = 1 if accelerator is None else accelerator.num_processes
    if config.rank_scope == "global" and world > 1:
        from accelerate.utils import gather_object

        all_texts = gather_object([list(texts)])
        all_gt = gather_object([gt.tolist()])
        sizes = [len(t) for t in all_texts]
        rank = accelerator.process_index
        start = sum(sizes[:rank])
        result = rapo_rewards(
            [t for part in all_texts for t in part],
            np.concatenate([np.asarray(g) for g in all_gt]),
            k,
            config,
        )
        local = slice(start, start + len(texts))
    else:
        result = rapo_rewards(list(texts), gt, k, config)
        local = slice(0, len(texts))
    stats = _stats(result, k)
    if config.rank_scope == "local" and world > 1:
        # Log batch-wide means even when each process scores alone.
        import torch

        values = torch.tensor([stats[key] for key in sorted(stats)], dtype=torch.float64)
        values = accelerator.reduce(values.to(accelerator.device), reduction="mean").cpu()
        stats = dict(zip(sorted(stats), values.tolist(), strict=True))

    def part(values) -> np.ndarray:
        return np.asarray(values, dtype=np.float64)[local].copy()

    return ScoredRollouts(
        total=part(result.total),
        components={name: part(getattr(result, name)) for name in COMPONENTS},
        scores=part(result.scores),
        advantages=part(result.advantages),
        stats=stats,
    )
