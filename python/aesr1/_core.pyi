"""Type stubs of `aesr1._core`, the native extension (PyO3) over the Rust crate aesr1-core.

Use `aesr1.rewards` and `aesr1.metrics` instead: they normalise inputs and document semantics.
Arrays are 1-D contiguous float64 unless stated; errors are ValueError (bad values or shapes) or
TypeError (wrong types), naming the argument. Completions are sequences of `str`; one with lone
surrogates (no UTF-8 form) is read with U+FFFD in their place.
"""

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__version__: str

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

def ndtr(x: F64) -> F64:
    """Standard normal distribution function Φ, element-wise (a few ulp)."""

def parse_scores(completions: Sequence[str]) -> F64:
    """Parsed `<answer>` score per completion; NaN when unparseable."""

def format_rewards(completions: Sequence[str]) -> F64:
    """1.0 per completion of the form `<think>…</think><answer>…</answer>`, else 0.0."""

def parse_completions(completions: Sequence[str]) -> tuple[F64, F64]:
    """(scores, format rewards) in one pass."""

def rapo(
    pred: F64,
    gt: F64,
    group_size: int | None,
    group_ids: I64 | None,
    format: F64 | None,
    weights: tuple[float, float, float, float],
    sigma: float,
    eps: float,
    gamma: float,
    threshold: float,
    ties: str,
) -> tuple[F64, int]:
    """(packed, num_unparseable): `packed` is total, rank, abs, binary, format and advantages one
    after another (6·M values). `gt` is per group; groups are `group_size` contiguous completions
    or dense codes `group_ids` (0..G-1)."""

def rank_reward(
    pred: F64, gt: F64, group_size: int | None, group_ids: I64 | None, gamma: float, ties: str
) -> F64: ...
def preference_probability(mu_a: F64, std_a: F64, mu_b: F64, std_b: F64, gamma: float) -> F64:
    """FRank preference probability of paper Eq. 3 per pair, P(A more aesthetic than B) =
    Φ((μ_A − μ_B) / sqrt(σ_A² + σ_B² + γ)); the Φ of the rank reward, computed by the same code.
    ValueError for unequal lengths, a non-finite μ, a negative or non-finite σ, γ < 0, or
    σ_A² + σ_B² + γ that is 0 (division by zero) or overflows."""

def abs_reward(pred: F64, gt: F64, sigma: float, eps: float) -> F64: ...
def binary_reward(pred: F64, gt: F64, threshold: float) -> F64: ...
def group_advantages(rewards: F64, group_size: int | None, group_ids: I64 | None) -> F64:
    """Eq. 9 per group; any finite rewards (huge groups are scaled by a power of two, exactly)."""

def plcc(pred: F64, gt: F64, omit: bool) -> float: ...
def srcc(pred: F64, gt: F64, omit: bool) -> float: ...
def krcc(pred: F64, gt: F64, omit: bool) -> float: ...
def evaluate(pred: F64, gt: F64, omit: bool) -> tuple[float, float, float, int]:
    """(plcc, srcc, krcc, n)."""

def num_threads() -> int:
    """Threads of the native pool (set RAYON_NUM_THREADS before first use to change)."""

def host_saturated() -> bool:
    """Whether other threads fill every CPU, so large inputs run on one thread (re-read every 50 ms)."""
