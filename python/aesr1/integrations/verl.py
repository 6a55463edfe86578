"""RAPO for verl: a batch reward manager grouped by `uid`, and a per-sample `compute_score`.

`RapoRewardManager` follows verl's batch reward-manager interface (`AbstractRewardManager`:
constructed with `tokenizer, num_examine, compute_score, reward_fn_key, **reward_kwargs`, called
with a `DataProto` as `manager(data, return_dict=True)`), which verl's PPO trainer calls on the whole
training batch. It decodes each response, reads the ground truth from
`non_tensor_batch["reward_model"][i]["ground_truth"]`, and groups completions by the
`non_tensor_batch["uid"]` verl assigns to each prompt before repeating it `rollout.n` times. Grouping
by uid and not by position matters: `trainer.balance_batch` reorders the batch across data-parallel
ranks before rewards are computed, so a group's completions are no longer adjacent.

Importing this module registers the manager under the name "rapo" in verl's reward-manager registry
(`verl.workers.reward_manager.register`) when verl is installed. The module can also be loaded from
its file path by verl's importlib loader (`custom_reward_function.path`): that load registers the same
class and exposes `compute_score`. See the README section "RAPO in other RL stacks" for the configuration lines.

`compute_score` is the per-sample form verl's naive manager and reward loop call. It can give the
absolute (Eq. 6), binary (Eq. 13) and format rewards only: the rank reward (Eq. 3-5) of a completion
compares it with the mean and variance of every other image's predictions in the batch, which a
function seeing one completion at a time does not have.
"""

from __future__ import annotations

import importlib
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np

from aesr1.integrations._common import (
    COMPONENTS,
    check_constant_ground_truth,
    check_rapo_options,
    check_weights,
    ground_truth_floats,
    group_codes,
    score_batch,
)

__all__ = ["RapoRewardManager", "compute_score", "REGISTERED_NAME"]

#: Name under which the manager is registered with verl (`reward_model.reward_manager=rapo`).
REGISTERED_NAME = "rapo"
#: Keys of `reward_extra_info` besides the components: the total and the parsed score.
EXTRA_INFO_KEYS = ("score", *COMPONENTS, "pred")


def _ground_truths(non_tensor_batch: Mapping[str, Any], n: int) -> np.ndarray:
    if "reward_model" not in non_tensor_batch:
        raise ValueError("data.non_tensor_batch has no 'reward_model' field holding the ground truth")
    entries = non_tensor_batch["reward_model"]
    if len(entries) != n:
        raise ValueError(
            f"data.non_tensor_batch['reward_model'] has {len(entries)} entries for {n} responses"
        )
    values = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or "ground_truth" not in entry:
            raise ValueError(f"data.non_tensor_batch['reward_model'][{i}] has no 'ground_truth': {entry!r}")
        values.append(entry["ground_truth"])
    return ground_truth_floats(values, argument="reward_model.ground_truth")


class RapoRewardManager:
    """verl batch reward manager computing RAPO (Eq. 3-10) per `uid` group. See the module docstring.

    Args:
        tokenizer: decodes `responses` (special tokens skipped, as verl's own managers do).
        num_examine: how many decoded samples per data source to print, as verl's managers do.
        compute_score: accepted for verl's constructor call and ignored: RAPO is the score.
        reward_fn_key: non-tensor field naming each sample's data source (for `num_examine`).
        config: accepted for the constructor call of newer verl versions; unused.
        weights: component weights (`rank`, `abs`, `binary`, `format`); default rank 1, abs 1.
        group_key: non-tensor field whose equal values form a group; verl's `uid` by default.
        **rapo_options: further keyword arguments for `aesr1.rewards.rapo` (e.g. `ties="half"`); verl
            passes `reward_model.reward_kwargs` of its config here.
    """

    def __init__(
        self,
        tokenizer: Any,
        num_examine: int = 0,
        compute_score: Any = None,
        reward_fn_key: str = "data_source",
        config: Any = None,
        *,
        weights: Mapping[str, float] | None = None,
        group_key: str = "uid",
        **rapo_options: Any,
    ):
        if tokenizer is None or not hasattr(tokenizer, "batch_decode"):
            raise TypeError("tokenizer must be a tokenizer with batch_decode (the rollout model's)")
        if isinstance(num_examine, bool) or not isinstance(num_examine, int) or num_examine < 0:
            raise ValueError(f"num_examine must be a non-negative int, got {num_examine!r}")
        self.tokenizer = tokenizer
        self.num_examine = num_examine
        self.reward_fn_key = reward_fn_key
        self.weights = check_weights(weights)
        self.group_key = group_key
        self.rapo_options = check_rapo_options(rapo_options, argument="reward_kwargs")

    def decode_responses(self, data: Any) -> list[str]:
        """Each response's text: its valid (unpadded) tokens, decoded without special tokens."""
        for key in ("prompts", "responses", "attention_mask"):
            # verl's `batch` is a TensorDict, which refuses `key in td`; `.keys()` is its spelling.
            if key not in data.batch.keys():  # noqa: SIM118
                raise ValueError(f"data.batch has no {key!r} tensor")
        prompt_len = data.batch["prompts"].shape[-1]
        responses = data.batch["responses"]
        lengths = data.batch["attention_mask"][:, prompt_len:].sum(dim=-1).tolist()
        ids = [responses[i, : int(n)].tolist() for i, n in enumerate(lengths)]
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def __call__(self, data: Any, return_dict: bool = False) -> Any:
        import torch

        n = len(data)
        if n == 0:
            raise ValueError("data is an empty batch")
        texts = self.decode_responses(data)
        gt = _ground_truths(data.non_tensor_batch, n)
        if self.group_key not in data.non_tensor_batch:
            raise ValueError(
                f"data.non_tensor_batch has no {self.group_key!r} field: verl sets 'uid' per prompt before "
                "rollout; without it completions cannot be grouped"
            )
        keys = list(data.non_tensor_batch[self.group_key])
        if len(keys) != n:
            raise ValueError(
                f"data.non_tensor_batch[{self.group_key!r}] has {len(keys)} entries for {n} responses"
            )
        groups = group_codes(keys, argument=self.group_key)
        check_constant_ground_truth(gt, groups, hint=f"check the {self.group_key!r} field")

        scored = score_batch(texts, gt, groups, self.weights, self.rapo_options)

        # verl's outcome rewards sit on the last valid response token; the rest of the row is zero.
        responses = data.batch["responses"]
        prompt_len = data.batch["prompts"].shape[-1]
        lengths = data.batch["attention_mask"][:, prompt_len:].sum(dim=-1).long()
        reward_tensor = torch.zeros_like(responses, dtype=torch.float32)
        last = (lengths - 1).clamp(min=0)
        reward_tensor[torch.arange(n, device=responses.device), last] = torch.tensor(
            scored.total, dtype=torch.float32, device=responses.device
        )
        self._examine(data, texts, gt, scored.total)
        if not return_dict:
            return reward_tensor
        extra: dict[str, list[float]] = {"score": scored.total.tolist()}
        extra.update({name: scored.components[name].tolist() for name in COMPONENTS})
        extra["pred"] = scored.pred.tolist()
        return {"reward_tensor": reward_tensor, "reward_extra_info": extra}

    def _examine(self, data: Any, texts: list[str], gt: np.ndarray, total: np.ndarray) -> None:
        if not self.num_examine:
            return
        sources = data.non_tensor_batch.get(self.reward_fn_key, ["unknown"] * len(texts))
        printed: dict[Any, int] = defaultdict(int)
        for i, source in enumerate(sources):
            if printed[source] < self.num_examine:
                printed[source] += 1
                print("[response]", texts[i])
                print("[ground_truth]", gt[i])
                print("[score]", total[i])


def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Any = None,
    *,
    weights: Mapping[str, float] | None = None,
    **rapo_options: Any,
) -> dict[str, float]:
    """Per-sample RAPO components for verl's `custom_reward_function` (naive manager, reward loop).

    Returns `{"score": total, "abs": ..., "binary": ..., "format": ..., "pred": parsed score}`;
    verl trains on "score" and logs the rest. `weights` defaults to the absolute reward alone (Eq. 6);
    a rank weight is refused because the rank reward (Eq. 3-5) needs the other images of the batch:
    use `RapoRewardManager` for it. `data_source` and `extra_info` are accepted and unused.
    """
    if not isinstance(solution_str, str):
        raise TypeError(f"solution_str must be a string, got {type(solution_str).__name__}")
    weights = check_weights({"abs": 1.0} if weights is None else weights)
    if weights.get("rank", 0.0):
        raise ValueError(
            "weights: the rank reward needs every completion of the batch (it compares each prediction "
            "with the other images' prediction means and variances, Eq. 3-5) and a per-sample "
            "compute_score sees one; use RapoRewardManager (reward_model.reward_manager=rapo)"
        )
    rapo_options = check_rapo_options(rapo_options, argument="compute_score keyword arguments")
    gt = ground_truth_floats([ground_truth], argument="ground_truth")
    scored = score_batch([solution_str], gt, np.zeros(1, dtype=np.int64), weights, rapo_options)
    out = {"score": float(scored.total[0])}
    out.update({name: float(scored.components[name][0]) for name in COMPONENTS if name != "rank"})
    out["pred"] = float(scored.pred[0])
    return out


def register_with_verl() -> bool:
    """Register `RapoRewardManager` as "rapo" in verl's reward-manager registry; False without verl.

    The class registered is always the one of the module imported as `aesr1.integrations.verl`, also
    when this file is executed under another name by verl's file-path loader: verl's registry refuses
    a second, different class under one name.
    """
    try:
        from verl.workers.reward_manager import register
    except ImportError:
        return False
    canonical = importlib.import_module("aesr1.integrations.verl")
    register(REGISTERED_NAME)(canonical.RapoRewardManager)
    return True


register_with_verl()
