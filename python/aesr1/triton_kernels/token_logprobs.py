"""Per-token log-probabilities and entropies, no gradient: old and reference log-probs for RAPO.

The Triton path launches the very kernel of the loss (`rapo_loss._rapo_token_kernel`) with the
gradient pass switched off by a runtime flag, so both run one binary over the same reduction order:
log-probs of the same logits agree bit for bit and on-policy ratios are exactly 1.
"""

from __future__ import annotations

import torch

from .rapo_loss import RapoHyperparams, rapo_token_forward

__all__ = ["token_logprobs_forward", "token_logprobs_reference"]


@torch.no_grad()
def token_logprobs_forward(
    logits: torch.Tensor,
    ids: torch.Tensor,
    valid: torch.Tensor,
    temperature: float,
    *,
    backend: str,
    block_v: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log_softmax(logits / temperature)[ids], entropy), fp32 (B, T); 0 where `valid` is False.

    Normalised inputs: logits (B, T, V) with unit stride over V, ids (B, T) int64, valid (B, T) bool.
    """
    hp = RapoHyperparams(temperature=temperature, beta=0.0)
    return rapo_token_forward(
        logits, ids, valid, None, None, None, None, hp, backend=backend, write_grad=False, block_v=block_v
    )


@torch.no_grad()
def token_logprobs_reference(
    logits: torch.Tensor, ids: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager fp32 PyTorch: log_softmax, gather and entropy over the full (B, T, V) tensor."""
    log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = log_probs.gather(-1, ids.long().unsqueeze(-1)).squeeze(-1)
    probs = log_probs.exp()
    entropy = -torch.where(probs > 0, probs * log_probs, torch.zeros_like(probs)).sum(-1)
    return logp, entropy
