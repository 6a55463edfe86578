"""Settings of the RAPO loss (paper Eq. 10-12): the one place their default values are written.

Imports neither torch nor Triton, so that `aesr1.train.config` (which takes its RAPO loss defaults
from here) stays cheap to import. `aesr1.loss` re-exports everything; the keyword defaults of its
functions and of the kernels' `RapoHyperparams` are read from `RapoLossConfig`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["AGGREGATIONS", "BACKENDS", "Aggregation", "Backend", "RapoLossConfig"]

Aggregation = Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]
Backend = Literal["auto", "triton", "torch"]
AGGREGATIONS: tuple[str, ...] = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
BACKENDS: tuple[str, ...] = ("auto", "triton", "torch")


@dataclass
class RapoLossConfig:
    """Hyperparameters of the RAPO loss; `rapo_loss(..., **config.as_kwargs())`.

    The field names are the keyword arguments of `aesr1.loss.rapo_loss` and of the kernels. The
    training config (`aesr1.train.config.RAPOConfig`) uses trl's names for two of them: its
    `epsilon` is `eps_low` here and its `epsilon_high` is `eps_high` (`RAPOConfig.loss_config`).

    Attributes:
        eps_low: lower clip range of the ratio, 1 - eps_low (paper: 0.2).
        eps_high: upper clip range, 1 + eps_high (paper Appendix C: 0.28, DAPO clip-higher).
        beta: k3 KL coefficient (paper Appendix C: 0.01); 0 drops the term and the need for ref_logp.
        temperature: the sampling temperature; logits are divided by it.
        aggregation: one of `AGGREGATIONS` (default Eq. 10's per-sequence token mean).
        kl_clamp: verl's low_var_kl clamps on the KL term (log-ratio to +-20, value to +-10).
        max_completion_length: Dr. GRPO's constant normaliser; None = the padded length T.
        backend: "auto" (Triton on CUDA, PyTorch elsewhere), "triton" or "torch".
    """

    eps_low: float = 0.2
    eps_high: float = 0.28
    beta: float = 0.01
    temperature: float = 1.0
    aggregation: Aggregation = "seq-mean-token-mean"
    kl_clamp: bool = False
    max_completion_length: int | None = None
    backend: Backend = "auto"

    def as_kwargs(self) -> dict[str, Any]:
        return asdict(self)
