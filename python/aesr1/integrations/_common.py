"""Glue shared by the trl and verl adapters: completion text, weights, group codes, one `rapo` call.

Every reward value comes from `aesr1.rewards.rapo`; this module only reshapes what the stacks hand
over (chat messages, hashable group keys, per-sample ground truth) into its inputs.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The reward components of `aesr1.rewards.rapo`, in the order the adapters report them.
COMPONENTS: tuple[str, ...] = ("rank", "abs", "binary", "format")
#: The paper's RAPO (Eq. 10): rank reward plus absolute reward, each with weight 1.
DEFAULT_WEIGHTS: dict[str, float] = {"rank": 1.0, "abs": 1.0}


def completion_text(completion: Any, *, argument: str = "completions") -> str:
    """The text of one completion: a string as is, or the last assistant message of a conversation.

    trl hands conversational completions over as a list of message dicts
    (`[{"role": "assistant", "content": ...}]`, several messages after tool calls); content may be a
    string or a list of typed parts, whose text parts are joined.
    """
    if isinstance(completion, str):
        return completion
    messages = [completion] if isinstance(completion, Mapping) else completion
    if not isinstance(messages, Sequence) or not messages:
        raise TypeError(
            f"{argument}: each completion must be a string or a non-empty list of chat messages, "
            f"got {type(completion).__name__}"
        )
    assistant = [m for m in messages if isinstance(m, Mapping) and m.get("role", "assistant") == "assistant"]
    if not assistant:
        raise TypeError(f"{argument}: a conversational completion has no assistant message: {completion!r}")
    content = assistant[-1].get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and part.get("type", "text") == "text":
                parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise TypeError(
        f"{argument}: message content must be a string or a list of parts, got {type(content).__name__}"
    )


def check_weights(weights: Mapping[str, float] | None, *, argument: str = "weights") -> dict[str, float]:
    """Validated component weights (missing components weigh 0); `None` gives `DEFAULT_WEIGHTS`."""
    if weights is None:
        return dict(DEFAULT_WEIGHTS)
    if not isinstance(weights, Mapping):
        raise TypeError(
            f"{argument} must be a mapping from component name to weight, got {type(weights).__name__}"
        )
    unknown = set(weights) - set(COMPONENTS)
    if unknown:
        raise ValueError(
            f"{argument}: unknown component(s) {sorted(unknown)}; expected some of {list(COMPONENTS)}"
        )
    checked = {}
    for name, value in weights.items():
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{argument}[{name!r}] must be a number, got {value!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"{argument}[{name!r}] must be finite, got {value}")
        checked[name] = value
    if not any(checked.values()):
        raise ValueError(f"{argument}: at least one component needs a non-zero weight, got {dict(weights)}")
    return checked


#: `rapo` arguments the adapters set themselves.
_RESERVED_OPTIONS = ("weights", "group_ids", "num_generations")


def check_rapo_options(options: Mapping[str, Any], *, argument: str) -> dict[str, Any]:
    """`options` as keyword arguments for `aesr1.rewards.rapo`, checked against its signature now
    rather than at the first training step."""
    import inspect

    from aesr1 import rewards

    if not isinstance(options, Mapping):
        raise TypeError(
            f"{argument} must be a mapping of rapo keyword arguments, got {type(options).__name__}"
        )
    reserved = sorted(set(options) & set(_RESERVED_OPTIONS))
    if reserved:
        raise ValueError(
            f"{argument} must not set {reserved}: the adapter sets them (use its weights and grouping)"
        )
    accepted = set(inspect.signature(rewards.rapo).parameters) - {"batch", *_RESERVED_OPTIONS}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"{argument}: rapo has no option(s) {unknown}; accepted: {sorted(accepted)}")
    return dict(options)


def ground_truth_floats(values: Sequence[Any], *, argument: str) -> np.ndarray:
    """Ground-truth scores as float64; strings such as "0.62" (verl datasets store them so) are parsed."""
    out = np.empty(len(values), dtype=np.float64)
    for i, value in enumerate(values):
        try:
            out[i] = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{argument}[{i}] must be a score in [0, 1], got {value!r}") from None
    return out


def group_codes(keys: Sequence[Hashable], *, argument: str) -> np.ndarray:
    """Integer group ids, numbered by first occurrence, for arbitrary hashable keys (uids, image ids)."""
    codes: dict[Hashable, int] = {}
    out = np.empty(len(keys), dtype=np.int64)
    for i, key in enumerate(keys):
        try:
            out[i] = codes.setdefault(key, len(codes))
        except TypeError:
            raise TypeError(f"{argument}[{i}] must be hashable, got {type(key).__name__}") from None
    return out


def check_constant_ground_truth(gt: np.ndarray, groups: np.ndarray, *, hint: str) -> None:
    """Raise if one group mixes ground truths: its completions would then not share one image."""
    order = np.argsort(groups, kind="stable")
    sorted_groups, sorted_gt = groups[order], gt[order]
    same_group = sorted_groups[1:] == sorted_groups[:-1]
    clash = same_group & (sorted_gt[1:] != sorted_gt[:-1])
    if clash.any():
        k = int(np.flatnonzero(clash)[0])
        raise ValueError(
            f"group {int(sorted_groups[k])} mixes ground truths {sorted_gt[k]} and {sorted_gt[k + 1]}: "
            f"its completions cannot come from one image ({hint})"
        )


@dataclass(frozen=True)
class ScoredBatch:
    """Per-completion rewards of one batch, in the batch's order.

    Attributes:
        total: the weighted sum of the components (what the policy optimises).
        components: each component of `COMPONENTS`, unweighted.
        pred: the parsed score of each completion (NaN where it could not be parsed).
        num_unparseable: completions whose score could not be parsed.
    """

    total: np.ndarray
    components: dict[str, np.ndarray]
    pred: np.ndarray
    num_unparseable: int


def score_batch(
    texts: Sequence[str],
    gt: np.ndarray,
    groups: np.ndarray,
    weights: Mapping[str, float],
    options: Mapping[str, Any],
) -> ScoredBatch:
    """`aesr1.rewards.rapo` on completions `texts` with per-completion `gt` and group ids `groups`."""
    from aesr1 import rewards

    result = rewards.rapo(
        {"completions": list(texts), "gt": gt}, weights=dict(weights), group_ids=groups, **dict(options)
    )
    components = {name: np.asarray(getattr(result, name), dtype=np.float64) for name in COMPONENTS}
    return ScoredBatch(
        total=np.asarray(result.total, dtype=np.float64),
        components=components,
        pred=np.asarray(result.scores, dtype=np.float64),
        num_unparseable=int(result.num_unparseable),
    )
