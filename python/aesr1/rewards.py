"""RAPO rewards of the Aes-R1 paper (§3.3) and GRPO-style group advantages.

Everything here needs only numpy; the arithmetic runs in the native core (`aesr1._core`), in
parallel, with results that do not depend on the number of threads.

Components, per completion k of image i with parsed score o_ik and ground truth s_i in [0, 1]:

* rank reward, Eq. 3–5 (FRank fidelity against every other image j):
  ``p = Φ((o_ik − μ_j) / sqrt(σ_i² + σ_j² + γ))``, ``p_c = 1 if s_i >= s_j else 0``,
  ``r_rank = mean_j sqrt(p_c·p) + sqrt((1 − p_c)(1 − p))``;
* absolute error reward, Eq. 6: ``exp(−½(|o − s|/σ)²) + ε``;
* binary reward, Eq. 13 (Table 2's ablation): ``1 if |o − s| < threshold else 0``;
* format reward: 1 when the completion is ``<think>…</think><answer>…</answer>``;
* total, Eq. 7: a weighted sum (RAPO: rank + abs);
* advantage, Eq. 9: ``(r − mean(R_i)) / (std(R_i) + 1e-4)`` within each image's K completions.

μ_j and σ_j² are the mean and unbiased variance of image j's parseable scores (variance 0 with
fewer than two); partners j are the other images with at least one parseable score. An
unparseable completion (score NaN) gets 0 from every component (the format reward too) and is
left out of μ and σ². ``1 − p`` is evaluated as Φ(−z), exact in the tail.

Batches: either K completions (or predictions) per image, given as a list of lists, an (N, K)
array, or a flat sequence with ``num_generations=K`` (trl's layout); or a flat sequence whose
groups are given by ``group_ids`` in any order (verl reorders batches).

Numeric inputs are anything numpy reads as numbers; a masked array with masked entries raises
ValueError, since its mask would otherwise be silently dropped (fill it, e.g. with NaN, first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np

from aesr1 import _core

__all__ = [
    "WEIGHT_PRESETS",
    "RapoResult",
    "RewardWeights",
    "abs_reward",
    "binary_reward",
    "format_reward",
    "group_advantages",
    "parse_scores",
    "rank_reward",
    "rapo",
]

Ties = Literal["strict", "half"]


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the reward components in the total reward (Eq. 7).

    The default is the paper's RAPO reward, ``r = r_rank + r_abs``. Table 2's ablations are other
    settings; see `WEIGHT_PRESETS`.
    """

    rank: float = 1.0
    """Weight of the relative rank reward (Eq. 3–5)."""
    abs: float = 1.0
    """Weight of the absolute error reward (Eq. 6), "error reward" in Table 2."""
    binary: float = 0.0
    """Weight of the binary reward (Eq. 13)."""
    format: float = 0.0
    """Weight of the format reward (needs completions, not bare predictions)."""

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (float(self.rank), float(self.abs), float(self.binary), float(self.format))


#: The five reward combinations of the paper's Table 2 ("error" is the absolute error reward).
WEIGHT_PRESETS: dict[str, RewardWeights] = {
    "binary": RewardWeights(rank=0.0, abs=0.0, binary=1.0),
    "error": RewardWeights(rank=0.0, abs=1.0),
    "rank": RewardWeights(rank=1.0, abs=0.0),
    "binary+rank": RewardWeights(rank=1.0, abs=0.0, binary=1.0),
    "error+rank": RewardWeights(rank=1.0, abs=1.0),
    "rapo": RewardWeights(),
}

WeightsLike = RewardWeights | Mapping[str, float] | str | None


@dataclass(frozen=True)
class RapoResult:
    """Per-completion rewards of one batch, flattened in input order (read-only arrays)."""

    total: np.ndarray
    """Weighted total reward (Eq. 7)."""
    rank: np.ndarray
    """Relative rank reward (Eq. 3–5); zeros when its weight is 0 (not computed)."""
    abs: np.ndarray
    """Absolute error reward (Eq. 6)."""
    binary: np.ndarray
    """Binary reward (Eq. 13)."""
    format: np.ndarray
    """Format reward, 0 where the score is unparseable (zeros for a `pred` batch)."""
    scores: np.ndarray
    """Parsed scores (the predictions themselves for a `pred` batch); NaN where unparseable."""
    advantages: np.ndarray
    """Group-relative advantages of `total` (Eq. 9)."""
    num_unparseable: int
    """Number of completions whose score could not be parsed."""

    def __len__(self) -> int:
        return len(self.total)


# ---------------------------------------------------------------------------------------------
# Input normalisation


def _reject_masked(value: Any, name: str) -> None:
    """ValueError naming `name` when `value` is a masked array with masked entries.

    `np.asarray` would drop the mask and use whatever lies under it, so the caller must say what a
    masked entry means (NaN marks an unparseable prediction, or leave the entries out).
    """
    if isinstance(value, np.ma.MaskedArray) and np.ma.is_masked(value):
        count = int(np.ma.count_masked(value))
        raise ValueError(
            f"`{name}` is a masked array with {count} masked entries, which would be read as their "
            f"underlying values; pass `{name}.filled(np.nan)` or the unmasked entries instead"
        )


def _float_array(value: Any, name: str) -> np.ndarray:
    """`value` as a float64 array, or a TypeError naming `name` when it cannot be one."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"`{name}` must be numeric, got {type(value).__name__}")
    _reject_masked(value, name)
    try:
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"`{name}` must be numeric, got dtype {array.dtype}")
        return np.ascontiguousarray(array, dtype=np.float64)
    except (TypeError, ValueError) as err:
        if isinstance(err, TypeError) and str(err).startswith(f"`{name}`"):
            raise
        raise TypeError(f"`{name}` must be a numeric array: {err}") from None


def _check_ties(ties: str) -> str:
    if ties not in ("strict", "half"):
        raise ValueError(f"`ties` must be 'strict' or 'half', got {ties!r}")
    return ties


def _weight(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a number, got {value!r}") from None


def _weights(weights: WeightsLike) -> RewardWeights:
    if weights is None:
        return RewardWeights()
    if isinstance(weights, RewardWeights):
        return RewardWeights(
            **{f.name: _weight(getattr(weights, f.name), f"weights.{f.name}") for f in fields(RewardWeights)}
        )
    if isinstance(weights, str):
        try:
            return WEIGHT_PRESETS[weights]
        except KeyError:
            raise ValueError(
                f"`weights`: unknown preset {weights!r}; choose from {sorted(WEIGHT_PRESETS)}"
            ) from None
    if isinstance(weights, Mapping):
        known = {f.name for f in fields(RewardWeights)}
        unknown = set(weights) - known
        if unknown:
            raise ValueError(f"`weights`: unknown components {sorted(unknown)}; known: {sorted(known)}")
        values = {k: 0.0 for k in known}
        values.update({k: _weight(v, f"weights[{k!r}]") for k, v in weights.items()})
        return RewardWeights(**values)
    raise TypeError(
        f"`weights` must be RewardWeights, a mapping, a preset name or None, got {type(weights).__name__}"
    )


@dataclass(frozen=True)
class _Layout:
    """How a flat batch of M completions splits into G images, as the core takes it."""

    size: int | None  # K for contiguous equal groups
    codes: np.ndarray | None  # int64 label 0..G-1 per completion otherwise
    num_groups: int
    first: np.ndarray | None = None  # with codes: index of each group's first completion


def _codes(group_ids: Any, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes 0..G-1 of `group_ids` and the index of each group's first completion."""
    _reject_masked(group_ids, "group_ids")
    try:
        labels = np.asarray(group_ids)
    except Exception as err:  # noqa: BLE001 - any conversion failure is a type problem here
        raise TypeError(f"`group_ids` must be an array of labels: {err}") from None
    if labels.ndim != 1:
        raise ValueError(f"`group_ids` must be 1-D, got shape {labels.shape}")
    if len(labels) != count:
        raise ValueError(f"`group_ids` has length {len(labels)}, expected one label per completion ({count})")
    if labels.dtype.kind == "f" and np.isnan(labels).any():
        raise ValueError("`group_ids` must not contain NaN")
    try:
        _, first, codes = np.unique(labels, return_index=True, return_inverse=True)
    except TypeError as err:
        raise TypeError(f"`group_ids` labels must be mutually comparable: {err}") from None
    return codes.astype(np.int64, copy=False).ravel(), first


def _layout(count: int, group_ids: Any, num_generations: int | None) -> _Layout:
    if group_ids is not None and num_generations is not None:
        raise ValueError("give `group_ids` or `num_generations`, not both")
    if group_ids is not None:
        codes, first = _codes(group_ids, count)
        return _Layout(size=None, codes=codes, num_groups=len(first), first=first)
    if num_generations is None:
        raise ValueError(
            "a flat batch needs `num_generations` (K completions per image, contiguous) or `group_ids`"
        )
    if isinstance(num_generations, bool) or not isinstance(num_generations, (int, np.integer)):
        raise TypeError(f"`num_generations` must be an int, got {type(num_generations).__name__}")
    if num_generations < 1 or count % num_generations:
        raise ValueError(
            f"`num_generations` ({num_generations}) must be >= 1 and divide the batch size ({count})"
        )
    return _Layout(size=int(num_generations), codes=None, num_groups=count // int(num_generations))


def _group_truth(gt: np.ndarray, layout: _Layout, count: int, ordered_groups: bool) -> np.ndarray:
    """One ground truth per group from `gt` given per group or per completion.

    Per group needs an order of the groups: contiguous groups and `ordered_groups` (labels 0..G-1
    in the caller's image order, as for nested completions) have one; arbitrary labels do not.
    """
    if gt.ndim != 1:
        raise ValueError(f"`gt` must be 1-D, got shape {gt.shape}")
    per_image = layout.codes is None or ordered_groups
    if per_image and len(gt) == layout.num_groups:
        return gt
    if len(gt) != count:
        expected = f"{layout.num_groups} (one per image) or {count}" if per_image else str(count)
        raise ValueError(f"`gt` has length {len(gt)}, expected {expected} (one per completion)")
    if layout.codes is None:
        per_group = gt.reshape(layout.num_groups, layout.size)
        truth = np.ascontiguousarray(per_group[:, 0])
        mismatch = (per_group != truth[:, None]) & ~(np.isnan(per_group) & np.isnan(truth[:, None]))
    else:
        truth = gt[layout.first]
        mismatch = (gt != truth[layout.codes]) & ~(np.isnan(gt) & np.isnan(truth[layout.codes]))
    if mismatch.any():
        index = int(np.flatnonzero(mismatch.ravel())[0])
        raise ValueError(
            f"`gt` differs within one image's group (completion {index}); give one ground truth per image"
        )
    return truth


def _flatten_completions(completions: Any) -> tuple[list, list[int] | None]:
    """Flat list of completions and, for a list of lists, the group sizes."""
    if isinstance(completions, (str, bytes)) or not isinstance(completions, Sequence | np.ndarray):
        raise TypeError(
            f"`completions` must be a sequence of str or of lists of str, got {type(completions).__name__}"
        )
    if len(completions) == 0:
        raise ValueError("`completions` is empty")
    nested = [not isinstance(c, (str, bytes)) and isinstance(c, Sequence | np.ndarray) for c in completions]
    if not any(nested):
        return list(completions), None
    if not all(nested):
        index = nested.index(False)
        raise TypeError(
            f"`completions[{index}]` must be a list of str like the other items, got {type(completions[index]).__name__}"
        )
    sizes = [len(c) for c in completions]
    if 0 in sizes:
        raise ValueError(f"`completions[{sizes.index(0)}]` is empty")
    return [c for group in completions for c in group], sizes


# ---------------------------------------------------------------------------------------------
# Public API


def parse_scores(completions: Sequence[str]) -> np.ndarray:
    """Score of each completion: the last complete ``<answer>…</answer>`` block whose content is one
    decimal number in [0, 1] (whitespace around it allowed); NaN when there is none.

    Parsed natively in parallel, in time linear in the text. Non-string items raise TypeError.
    A string that is not valid Unicode (lone surrogates, e.g. from a bad decode) is read with each
    surrogate as an ordinary non-tag character, so its tags and number still count.
    """
    return _core.parse_scores(completions)


def format_reward(completions: Sequence[str]) -> np.ndarray:
    """1.0 for each completion that is exactly ``<think>…</think><answer>…</answer>`` (whitespace
    around and between the blocks allowed, no nested or repeated tags), else 0.0."""
    return _core.format_rewards(completions)


def abs_reward(pred: Any, gt: Any, *, sigma: float = 0.1, eps: float = 1e-5) -> np.ndarray:
    """Absolute error reward, Eq. 6: ``exp(−½(|o − s|/σ)²) + ε``; 0 for NaN predictions.

    `pred` (N, K) with `gt` (N,), or `pred` and `gt` of the same shape. Returns `pred`'s shape.
    """
    pred_a, gt_a = _elementwise(pred, gt)
    return _core.abs_reward(pred_a.ravel(), gt_a.ravel(), float(sigma), float(eps)).reshape(pred_a.shape)


def binary_reward(pred: Any, gt: Any, *, threshold: float = 0.1) -> np.ndarray:
    """Binary reward, Eq. 13: 1 where ``|o − s| < threshold``, else 0 (and 0 for NaN).

    `pred` (N, K) with `gt` (N,), or `pred` and `gt` of the same shape. Returns `pred`'s shape.
    """
    pred_a, gt_a = _elementwise(pred, gt)
    return _core.binary_reward(pred_a.ravel(), gt_a.ravel(), float(threshold)).reshape(pred_a.shape)


def _elementwise(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    pred_a, gt_a = _float_array(pred, "pred"), _float_array(gt, "gt")
    if pred_a.ndim == 2 and gt_a.ndim == 1 and len(gt_a) == len(pred_a):
        gt_a = np.ascontiguousarray(np.broadcast_to(gt_a[:, None], pred_a.shape))
    if pred_a.shape != gt_a.shape:
        raise ValueError(
            f"`gt` has shape {gt_a.shape}, expected {pred_a.shape} or ({len(pred_a)},) for 2-D `pred`"
        )
    return pred_a, gt_a


def rank_reward(
    pred: Any,
    gt: Any,
    *,
    gamma: float = 1e-6,
    ties: Ties = "strict",
    group_ids: Any = None,
    num_generations: int | None = None,
) -> np.ndarray:
    """Relative rank reward, Eq. 3–5, of every prediction (see the module docs).

    `pred` is (N, K) with `gt` (N,), or flat with `num_generations` or `group_ids` (then `gt` is
    per image or per completion). ``ties="half"`` sets p_c = 1/2 for equal ground truths instead
    of Eq. 5's 1. Returns `pred`'s shape.
    """
    pred_a, truth, layout = _prepare(pred, gt, group_ids, num_generations)
    out = _core.rank_reward(pred_a.ravel(), truth, layout.size, layout.codes, float(gamma), _check_ties(ties))
    return out.reshape(pred_a.shape)


def group_advantages(
    rewards: Any, *, group_ids: Any = None, num_generations: int | None = None
) -> np.ndarray:
    """Group-relative advantages, Eq. 9: ``(r − mean(R_i)) / (std(R_i) + 1e-4)`` with the unbiased
    standard deviation of each image's rewards; 0 for groups of one. Any finite rewards work, however
    large (the group statistics are computed without overflow).

    `rewards` is (N, K) or flat with `num_generations` or `group_ids`. Returns `rewards`' shape.
    """
    values = _float_array(rewards, "rewards")
    if values.ndim == 2 and group_ids is None and num_generations is None:
        layout = _layout(values.size, None, values.shape[1]) if values.size else None
    elif values.ndim == 1:
        layout = _layout(len(values), group_ids, num_generations) if values.size else None
    else:
        raise ValueError(f"`rewards` must be (N, K) or flat, got shape {values.shape}")
    if layout is None:
        raise ValueError("`rewards` is empty")
    return _core.group_advantages(values.ravel(), layout.size, layout.codes).reshape(values.shape)


def _prepare(
    pred: Any, gt: Any, group_ids: Any, num_generations: int | None, ordered_groups: bool = False
) -> tuple[np.ndarray, np.ndarray, _Layout]:
    pred_a = _float_array(pred, "pred")
    if pred_a.size == 0:
        raise ValueError("`pred` is empty")
    if pred_a.ndim == 2:
        if group_ids is not None or num_generations not in (None, pred_a.shape[1]):
            raise ValueError(
                "2-D `pred` is (images, completions): do not also give `group_ids` or another `num_generations`"
            )
        layout = _layout(pred_a.size, None, pred_a.shape[1])
    elif pred_a.ndim == 1:
        layout = _layout(pred_a.size, group_ids, num_generations)
    else:
        raise ValueError(f"`pred` must be (N, K) or flat, got shape {pred_a.shape}")
    gt_a = _float_array(gt, "gt")
    if gt_a.ndim == 2 and gt_a.shape == pred_a.shape:
        gt_a = gt_a.ravel()  # one per completion
    truth = _group_truth(gt_a, layout, pred_a.size, ordered_groups)
    return pred_a, np.ascontiguousarray(truth), layout


def rapo(
    batch: Mapping[str, Any] | tuple[Any, Any],
    *,
    weights: WeightsLike = None,
    sigma: float = 0.1,
    eps: float = 1e-5,
    gamma: float = 1e-6,
    threshold: float = 0.1,
    ties: Ties = "strict",
    group_ids: Any = None,
    num_generations: int | None = None,
) -> RapoResult:
    """The RAPO reward (paper §3.3) of one batch: every component, the weighted total (Eq. 7) and
    the group advantages (Eq. 9), per completion in input order.

    `batch` is a mapping with ``completions`` (N·K strings, or N lists of strings) and ``gt``, or
    with ``pred`` (scores, NaN = unparseable; (N, K) or flat) and ``gt``; a ``(pred, gt)`` tuple
    also works. ``gt`` holds the normalised MOS in [0, 1], one per image or one per completion
    (equal within an image). Flat batches need `num_generations` (K contiguous completions per
    image, trl) or `group_ids` (a label per completion, any order, verl; then ``gt`` is given per
    completion). Lists of lists and 2-D arrays carry their groups.

    `weights` picks the components: None (RAPO: rank + abs), a `RewardWeights`, a mapping such as
    ``{"abs": 1, "binary": 1}`` (missing components weigh 0) or a preset name from
    `WEIGHT_PRESETS` (Table 2). Hyperparameters: `sigma`, `eps` (Eq. 6), `gamma` (Eq. 3),
    `threshold` (Eq. 13), `ties` ("strict" = Eq. 5, "half" = p_c 1/2 on equal ground truth).

    Raises ValueError/TypeError naming the argument for malformed input, before any work.
    """
    w = _weights(weights)
    _check_ties(ties)
    if isinstance(batch, tuple) and len(batch) == 2:
        batch = {"pred": batch[0], "gt": batch[1]}
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"`batch` must be a mapping with 'completions' or 'pred', and 'gt'; got {type(batch).__name__}"
        )
    if "gt" not in batch:
        raise ValueError("`batch` has no 'gt'")
    has_text, has_pred = "completions" in batch, "pred" in batch
    if has_text == has_pred:
        raise ValueError("`batch` needs exactly one of 'completions' and 'pred'")

    format_values = None
    if has_text:
        flat, sizes = _flatten_completions(batch["completions"])
        if sizes is not None:
            if group_ids is not None or num_generations is not None:
                raise ValueError(
                    "nested `completions` carry their groups: do not also give `group_ids` or `num_generations`"
                )
            group_ids = np.repeat(np.arange(len(sizes)), sizes)
            if len(set(sizes)) == 1:
                group_ids, num_generations = None, sizes[0]
        scores, format_values = _core.parse_completions(flat)
        # Ragged nested groups get labels 0..N-1 in list order, so `gt` may still be per image.
        pred_a, truth, layout = _prepare(
            scores, batch["gt"], group_ids, num_generations, ordered_groups=sizes is not None
        )
    else:
        pred_a, truth, layout = _prepare(batch["pred"], batch["gt"], group_ids, num_generations)
        scores = pred_a.ravel().copy()
    packed, unparseable = _core.rapo(
        pred_a.ravel(),
        truth,
        layout.size,
        layout.codes,
        format_values,
        w.as_tuple(),
        float(sigma),
        float(eps),
        float(gamma),
        float(threshold),
        ties,
    )
    packed.setflags(write=False)
    scores.setflags(write=False)
    total, rank, abs_, binary, fmt, advantages = packed.reshape(6, -1)
    return RapoResult(total, rank, abs_, binary, fmt, scores, advantages, num_unparseable=int(unparseable))
