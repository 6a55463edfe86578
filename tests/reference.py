"""Float64 NumPy/SciPy reference of the RAPO rewards and the parsers, written from the paper.

Used by the property tests (the native core must match it within 1e-12) and by
`benches/bench_rewards.py` (as the "vectorised NumPy" baseline). Plain, vectorised array code:
it favours being obviously right over being fast, but does not waste work either.

Groups of unequal size are passed as an (N, K_max) matrix padded with NaN: a NaN prediction is
exactly an unparseable completion, which every formula already leaves out.
"""

from __future__ import annotations

import re

import numpy as np
from scipy.special import ndtr

GAMMA = 1e-6
SIGMA = 0.1
EPS = 1e-5
THRESHOLD = 0.1
ADVANTAGE_EPS = 1e-4


def group_stats(pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, mean and unbiased variance (0 below two values) of each row's non-NaN values."""
    valid = ~np.isnan(pred)
    count = valid.sum(axis=1)
    filled = np.where(valid, pred, 0.0)
    mean = filled.sum(axis=1) / np.maximum(count, 1)
    dev = np.where(valid, pred - mean[:, None], 0.0)
    var = np.where(count >= 2, (dev * dev).sum(axis=1) / np.maximum(count - 1, 1), 0.0)
    return count, mean, var


def rank_reward(pred: np.ndarray, gt: np.ndarray, gamma: float = GAMMA, ties: str = "strict") -> np.ndarray:
    """Eq. 3–5 for an (N, K) matrix of predictions (NaN = unparseable) and N ground truths.

    p = Φ((o_ik − μ_j)/sqrt(σ_i² + σ_j² + γ)); p_c = 1 if s_i >= s_j else 0 (½ on ties when
    ties="half"); r = mean over partners j of sqrt(p_c p) + sqrt((1 − p_c)(1 − p)), with 1 − p
    computed as Φ(−z) so the tail is not rounded away. Partners: j != i with a parseable score.
    """
    n = pred.shape[0]
    count, mean, var = group_stats(pred)
    z = (pred[:, :, None] - mean[None, None, :]) / np.sqrt(var[:, None, None] + var[None, None, :] + gamma)
    pc = (gt[:, None] >= gt[None, :]).astype(np.float64)
    if ties == "half":
        pc = np.where(gt[:, None] == gt[None, :], 0.5, pc)
    pc = pc[:, None, :]
    with np.errstate(invalid="ignore"):
        term = np.sqrt(pc * ndtr(z)) + np.sqrt((1.0 - pc) * ndtr(-z))
    partner = (count[None, :] >= 1) & ~np.eye(n, dtype=bool)
    total = np.where(partner[:, None, :], term, 0.0).sum(axis=2)
    size = partner.sum(axis=1)[:, None]
    reward = np.where(size > 0, total / np.maximum(size, 1), 0.0)
    return np.where(np.isnan(pred), 0.0, reward)


def abs_reward(pred: np.ndarray, gt: np.ndarray, sigma: float = SIGMA, eps: float = EPS) -> np.ndarray:
    """Eq. 6 element-wise (gt broadcast against pred); 0 for NaN predictions."""
    with np.errstate(invalid="ignore"):
        r = np.exp(-0.5 * (np.abs(pred - gt) / sigma) ** 2) + eps
    return np.where(np.isnan(pred), 0.0, r)


def binary_reward(pred: np.ndarray, gt: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """Eq. 13 element-wise; 0 for NaN predictions."""
    with np.errstate(invalid="ignore"):
        return np.where(np.abs(pred - gt) < threshold, 1.0, 0.0)


def group_advantages(rewards: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Eq. 9 per row of an (N, K) reward matrix: (r − mean) / (std + 1e-4), std with ddof=1, 0 for
    rows of one. `valid` marks real completions when rows are padded.

    The mean is taken as r_0 + mean(r − r_0), which is exact for a constant row (numpy's mean of
    equal values can be off by an ulp, which 1/(0 + 1e-4) would blow up to ~1e-12).
    """
    if valid is None:
        valid = np.ones(rewards.shape, dtype=bool)
    k = valid.sum(axis=1)
    first = rewards[np.arange(len(rewards)), valid.argmax(axis=1)]
    offset = np.where(valid, rewards - first[:, None], 0.0).sum(axis=1) / np.maximum(k, 1)
    mean = first + offset
    dev = np.where(valid, rewards - mean[:, None], 0.0)
    std = np.sqrt((dev * dev).sum(axis=1) / np.maximum(k - 1, 1))
    adv = dev / (std[:, None] + ADVANTAGE_EPS)
    return np.where((k[:, None] >= 2) & valid, adv, 0.0)


_WS = " \t\n\r\x0b\x0c"  # Python's string.whitespace: what the parser calls whitespace
_ANSWER = re.compile(r"<answer>((?:(?!<answer>).)*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_NO_TAG = r"(?:(?!</?think>|</?answer>).)*"
_FORMAT = re.compile(
    rf"[{_WS}]*<think>{_NO_TAG}</think>[{_WS}]*<answer>{_NO_TAG}</answer>[{_WS}]*", re.DOTALL
)


def parse_score(text: str) -> float:
    """The last complete <answer> block whose content is one decimal number in [0, 1]; else NaN."""
    score = float("nan")
    for content in _ANSWER.findall(text):
        number = content.strip(_WS)
        if _NUMBER.fullmatch(number):
            value = float(number)
            if 0.0 <= value <= 1.0:
                score = value + 0.0
    return score


def format_reward(text: str) -> float:
    """1.0 when the text is <think>…</think><answer>…</answer> (see aesr1.rewards.format_reward)."""
    return 1.0 if _FORMAT.fullmatch(text) else 0.0


def rapo(
    pred: np.ndarray,
    gt: np.ndarray,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 0.0, 0.0),
    fmt: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    *,
    sigma: float = SIGMA,
    eps: float = EPS,
    gamma: float = GAMMA,
    threshold: float = THRESHOLD,
    ties: str = "strict",
) -> dict[str, np.ndarray]:
    """All components, the total (Eq. 7, weights rank/abs/binary/format) and Eq. 9 advantages for
    an (N, K) batch. `valid` marks real completions of NaN-padded ragged batches."""
    w_rank, w_abs, w_bin, w_fmt = weights
    gt_col = gt[:, None]
    rank = rank_reward(pred, gt, gamma, ties) if w_rank != 0 else np.zeros(pred.shape)
    absr = abs_reward(pred, gt_col, sigma, eps)
    binr = binary_reward(pred, gt_col, threshold)
    # An unparseable completion gets 0 from every component, the format reward included.
    fmt = np.zeros(pred.shape) if fmt is None else np.where(np.isnan(pred), 0.0, fmt)
    total = ((w_rank * rank + w_abs * absr) + w_bin * binr) + w_fmt * fmt
    return {
        "rank": rank,
        "abs": absr,
        "binary": binr,
        "format": fmt,
        "total": total,
        "advantages": group_advantages(total, valid),
    }
