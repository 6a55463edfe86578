"""RAPO as trl `GRPOTrainer` reward functions.

    reward = RapoReward()                                 # rank + abs, the paper's RAPO (Eq. 10)
    trainer = GRPOTrainer(model, reward_funcs=reward, args=GRPOConfig(num_generations=8, ...),
                          train_dataset=dataset_with_a_gt_column)

or, to have trl log each component (`rewards/rapo_rank/mean`, ...) while training on their sum:

    trainer = GRPOTrainer(model, reward_funcs=reward.reward_funcs(),
                          args=GRPOConfig(reward_weights=reward.reward_weights(), ...), ...)

Why a gather: trl calls reward functions on each process with that process's slice of the
generation batch only. The rank reward (Eq. 3-5) compares each image's predictions with those of
every other image in the batch, and one image's `num_generations` completions may straddle two
processes, so each call all-gathers completions, ground truths and group ids, scores the whole
generation batch once with `aesr1.rewards.rapo` and returns this process's slice. trl itself gathers
the returned rewards afterwards and normalises them per group; it lays a generation batch out as
consecutive runs of `num_generations` copies of one prompt (`RepeatSampler`), process after process,
which is the grouping used here unless a `group_column` names the groups.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aesr1.integrations._common import (
    COMPONENTS,
    ScoredBatch,
    check_constant_ground_truth,
    check_rapo_options,
    check_weights,
    completion_text,
    ground_truth_floats,
    group_codes,
    score_batch,
)

__all__ = ["RapoReward", "RapoRewardConfig"]


@dataclass
class RapoRewardConfig:
    """How `RapoReward` reads trl's batch and calls `aesr1.rewards.rapo`.

    Attributes:
        gt_column: dataset column holding each image's ground-truth score in [0, 1]; trl passes extra
            dataset columns to reward functions as keyword arguments, one value per completion.
        num_generations: completions per prompt, as in `GRPOConfig.num_generations`. `None` (default)
            reads it from the running `GRPOTrainer` (`num_generations` while training,
            `num_generations_eval` while evaluating); give it to use the reward outside a trainer.
        group_column: optional dataset column whose value identifies the image (e.g. an id or path);
            completions with equal values form one group, wherever they lie in the batch. `None`
            (default) groups by position, exactly as trl normalises advantages.
        weights: weight of each component (`rank`, `abs`, `binary`, `format`); default rank 1, abs 1.
            Any of Table 2's combinations is a weights setting.
        rapo_options: further keyword arguments for `aesr1.rewards.rapo` (e.g. `ties="half"`).
        log_predictions: log each completion's parsed score as a `rapo_pred` column of trl's completions
            table, and the fraction of unparseable completions as the `rapo/unparseable` metric.
    """

    gt_column: str = "gt"
    num_generations: int | None = None
    group_column: str | None = None
    weights: dict[str, float] | None = None
    rapo_options: dict[str, Any] = field(default_factory=dict)
    log_predictions: bool = True


def _all_gather(obj: Any) -> tuple[list[Any], int]:
    """Every process's `obj` in rank order, and this process's rank (one process: `[obj]`, 0).

    `torch.distributed` is what accelerate (and so trl) runs on; calling it directly also serves
    scripts that set up a process group without accelerate.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj], 0
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered, dist.get_rank()


def _trainer_num_generations(kwargs: Mapping[str, Any]) -> int | None:
    """`num_generations` of the calling GRPOTrainer in its current mode, if the call comes from one.

    trl passes its own bound `_log_metric` as the `log_metric` argument; its owner is the trainer.
    Like trl, the mode is "train" when the model is in training mode.
    """
    trainer = getattr(kwargs.get("log_metric"), "__self__", None)
    model = getattr(trainer, "model", None)
    if trainer is None or model is None or not hasattr(trainer, "num_generations"):
        return None
    if getattr(model, "training", True):
        return int(trainer.num_generations)
    return int(getattr(trainer, "num_generations_eval", None) or trainer.num_generations)


class RapoReward:
    """trl reward function computing RAPO on the whole generation batch (see the module docstring).

    Calling it returns the total reward of this process's completions. `reward_funcs()` gives one
    function per weighted component instead (named `rapo_rank`, `rapo_abs`, ...) to pass together with
    `reward_weights()`; all of them share one gather and one `rapo` call per batch.
    """

    def __init__(self, config: RapoRewardConfig | None = None, **overrides: Any):
        config = config or RapoRewardConfig()
        if not isinstance(config, RapoRewardConfig):
            raise TypeError(f"config must be a RapoRewardConfig, got {type(config).__name__}")
        if overrides:
            unknown = set(overrides) - set(RapoRewardConfig.__dataclass_fields__)
            if unknown:
                raise TypeError(f"unknown RapoRewardConfig field(s): {sorted(unknown)}")
            config = RapoRewardConfig(**{**config.__dict__, **overrides})
        if not isinstance(config.gt_column, str) or not config.gt_column:
            raise ValueError(f"gt_column must be a non-empty column name, got {config.gt_column!r}")
        if config.num_generations is not None and (
            isinstance(config.num_generations, bool)
            or not isinstance(config.num_generations, int)
            or config.num_generations < 1
        ):
            raise ValueError(
                f"num_generations must be a positive int or None, got {config.num_generations!r}"
            )
        self.config = config
        self.weights = check_weights(config.weights)
        self.rapo_options = check_rapo_options(config.rapo_options, argument="rapo_options")
        # trl names reward functions (and their logged metrics) after `__name__`.
        self.__name__ = "rapo"
        # Identity of the `completions` list trl passed last, and the scores computed for it. trl hands
        # the same list object to every reward function of one batch and a new one for the next batch,
        # on every process alike, so all processes hit or miss together and the collective gather
        # inside stays matched.
        self._cached_for: Any = None
        self._cached: tuple[ScoredBatch, slice] | None = None

    # -- trl entry points ----------------------------------------------------------------------

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        scored, local = self.score(prompts, completions, **kwargs)
        return scored.total[local].tolist()

    def reward_funcs(self) -> list[RapoComponentReward]:
        """One reward function per component with a non-zero weight, in `COMPONENTS` order."""
        return [RapoComponentReward(self, name) for name in COMPONENTS if self.weights.get(name, 0.0)]

    def reward_weights(self) -> list[float]:
        """`GRPOConfig.reward_weights` matching `reward_funcs()`: trl's weighted sum is then the total."""
        return [self.weights[name] for name in COMPONENTS if self.weights.get(name, 0.0)]

    # -- the shared computation ----------------------------------------------------------------

    def score(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> tuple[ScoredBatch, slice]:
        """RAPO of the whole (all-process) batch and the slice of it that is this process's.

        Computed once per batch: repeated calls with the same `completions` object reuse the result.
        """
        if self._cached is not None and self._cached_for is completions:
            return self._cached
        result = self._score(prompts, completions, kwargs)
        self._cached_for, self._cached = completions, result
        return result

    def _score(
        self, prompts: Sequence[Any], completions: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> tuple[ScoredBatch, slice]:
        config = self.config
        # A bad batch on one process must fail every process: raising before the collective gather
        # would leave the others waiting in it forever. So the local error travels with the gather.
        try:
            local_part = self._local_inputs(completions, kwargs)
            error = None
        except (TypeError, ValueError) as err:
            local_part, error = None, (type(err), str(err))
        gathered, rank = _all_gather((local_part, error))
        for process, (_, failure) in enumerate(gathered):
            if failure is not None:
                kind, message = failure
                raise kind(message if len(gathered) == 1 else f"process {process}: {message}")
        parts = [part for part, _ in gathered]
        sizes = [len(texts) for texts, _, _ in parts]
        start = sum(sizes[:rank])
        local = slice(start, start + sizes[rank])
        all_texts = [t for texts, _, _ in parts for t in texts]
        all_gt = np.array([g for _, gt, _ in parts for g in gt], dtype=np.float64)

        if config.group_column is not None:
            groups = group_codes([k for _, _, keys in parts for k in keys], argument=config.group_column)
            hint = f"check the {config.group_column!r} column"
        else:
            groups = self._positional_groups(len(all_texts), kwargs)
            hint = "check num_generations"
        check_constant_ground_truth(all_gt, groups, hint=hint)

        scored = score_batch(all_texts, all_gt, groups, self.weights, self.rapo_options)
        if config.log_predictions:
            self._log(scored, local, kwargs)
        return scored, local

    def _local_inputs(
        self, completions: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> tuple[list[str], list[float], list[Any] | None]:
        """This process's completion texts, ground truths and group keys, validated."""
        config = self.config
        if isinstance(completions, (str, bytes)) or not isinstance(completions, Sequence):
            raise TypeError(f"completions must be a list, got {type(completions).__name__}")
        texts = [completion_text(c) for c in completions]
        if config.gt_column not in kwargs:
            raise ValueError(
                f"gt_column {config.gt_column!r} is not among the reward function's arguments "
                f"{sorted(k for k in kwargs if k not in ('trainer_state', 'log_extra', 'log_metric'))}: "
                "add the ground-truth score column to the dataset or set RapoRewardConfig.gt_column"
            )
        gt_values = kwargs[config.gt_column]
        if len(gt_values) != len(texts):
            raise ValueError(f"{config.gt_column} has {len(gt_values)} values for {len(texts)} completions")
        gt = ground_truth_floats(gt_values, argument=config.gt_column).tolist()
        if config.group_column is None:
            return texts, gt, None
        if config.group_column not in kwargs:
            raise ValueError(
                f"group_column {config.group_column!r} is not among the reward function's arguments"
            )
        keys = list(kwargs[config.group_column])
        if len(keys) != len(texts):
            raise ValueError(f"{config.group_column} has {len(keys)} values for {len(texts)} completions")
        return texts, gt, keys

    def _positional_groups(self, total: int, kwargs: Mapping[str, Any]) -> np.ndarray:
        from_trainer = _trainer_num_generations(kwargs)
        configured = self.config.num_generations
        if configured is not None and from_trainer is not None and configured != from_trainer:
            raise ValueError(
                f"num_generations={configured} but the GRPOTrainer generates {from_trainer} completions per prompt"
            )
        k = configured or from_trainer
        if k is None:
            raise ValueError(
                "num_generations is unknown: set RapoRewardConfig.num_generations (or group_column) "
                "when calling the reward outside a GRPOTrainer"
            )
        if total % k:
            raise ValueError(
                f"the gathered batch of {total} completions is not a whole number of groups of {k}"
            )
        return np.arange(total, dtype=np.int64) // k

    @staticmethod
    def _log(scored: ScoredBatch, local: slice, kwargs: Mapping[str, Any]) -> None:
        log_extra, log_metric = kwargs.get("log_extra"), kwargs.get("log_metric")
        if callable(log_extra):
            log_extra("rapo_pred", scored.pred[local].tolist())
        if callable(log_metric):
            log_metric("rapo/unparseable", scored.num_unparseable / max(len(scored.pred), 1))


class RapoComponentReward:
    """One component of a `RapoReward` as its own trl reward function (unweighted values)."""

    def __init__(self, parent: RapoReward, component: str):
        if component not in COMPONENTS:
            raise ValueError(f"component must be one of {list(COMPONENTS)}, got {component!r}")
        self.parent = parent
        self.component = component
        # trl names reward functions (and their logged metrics) after `__name__`.
        self.__name__ = f"rapo_{component}"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        scored, local = self.parent.score(prompts, completions, **kwargs)
        return scored.components[self.component][local].tolist()

    def __repr__(self) -> str:
        return f"RapoComponentReward({self.component!r})"
