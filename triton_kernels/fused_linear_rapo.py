"""RAPO loss from the last hidden states and the lm_head weight, never materialising all logits.

Whole sequences are processed in chunks: one GEMM gives the chunk's logits, the token kernel of
`rapo_loss` turns them into d loss/d logits in place, then dX = dlogits @ W and dW += dlogits^T @ X.
Three GEMMs in all, the same count as an unfused lm_head + loss; the extra memory is one chunk of
logits plus dX and dW. Every GEMM accumulates in fp32; dX rows come from a single GEMM each, and dW
is summed across chunks in `weight_grad_dtype` (the weight's dtype unless asked otherwise: an fp32
accumulator for a bf16 vocabulary x hidden matrix would alone cost 4 bytes per weight).

On CPU the same chunked algorithm runs with the PyTorch reference of the token kernel.
"""

from __future__ import annotations

import torch

from .rapo_loss import RapoHyperparams, rapo_token_forward, scale_grad_, weighted_token_loss

__all__ = ["FusedLinearRapoFunction", "default_chunk_sequences"]

# Target size of one chunk of logits; at T = 1024 and V = 151,936 in bf16 this is one sequence.
_CHUNK_BYTES = 384 * 1024 * 1024
# Vocabulary rows per step when a mixed-precision dW accumulation has to go through a temporary.
_DW_SLICE_ROWS = 16384


def default_chunk_sequences(seq_len: int, vocab_size: int, element_size: int) -> int:
    return max(1, _CHUNK_BYTES // max(1, seq_len * vocab_size * element_size))


_mixed_addmm_works = True  # cuBLAS bf16 x bf16 -> fp32 addmm (torch's addmm.dtype_out), until it fails


def _accumulate_weight_grad(acc: torch.Tensor, grad_logits: torch.Tensor, hidden: torch.Tensor) -> None:
    """acc += grad_logits^T @ hidden, accumulating in fp32 inside the GEMM."""
    global _mixed_addmm_works
    if acc.dtype == grad_logits.dtype:
        acc.addmm_(grad_logits.t(), hidden)
        return
    if acc.is_cuda and _mixed_addmm_works:
        try:
            torch.addmm(acc, grad_logits.t(), hidden, out_dtype=acc.dtype, out=acc)
            return
        except (RuntimeError, TypeError):
            _mixed_addmm_works = False
    # fp32 accumulator, low-precision operands: bounded-size temporaries, one vocabulary slice at a time.
    for v0 in range(0, acc.shape[0], _DW_SLICE_ROWS):
        v1 = min(acc.shape[0], v0 + _DW_SLICE_ROWS)
        acc[v0:v1].add_(torch.mm(grad_logits[:, v0:v1].t(), hidden).to(acc.dtype))


class FusedLinearRapoFunction(torch.autograd.Function):
    """(loss, logp, entropy) of `RapoLossFunction` for logits = hidden @ weight^T, computed in chunks.

    Inputs as `rapo_token_forward`, with hidden (B, T, H) and weight (V, H) of one dtype; the
    gradients w.r.t. both are produced by the forward and scaled by the backward (once only).
    """

    @staticmethod
    def forward(
        ctx,
        hidden,
        weight,
        ids,
        valid,
        old_logp,
        ref_logp,
        advantages,
        token_weight,
        hp: RapoHyperparams,
        backend: str,
        chunk_sequences: int,
        weight_grad_dtype: torch.dtype | None,
        block_v: int | None,
        need_hidden_grad: bool,
        need_weight_grad: bool,
    ):
        batch, seq_len, width = hidden.shape
        vocab = weight.shape[0]
        write_grad = need_hidden_grad or need_weight_grad
        logp = torch.empty(batch, seq_len, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty_like(logp)
        grad_hidden = (
            torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device) if need_hidden_grad else None
        )
        grad_weight = None
        if need_weight_grad:
            grad_weight = torch.zeros(
                vocab, width, dtype=weight_grad_dtype or weight.dtype, device=weight.device
            )
        for b0 in range(0, batch, chunk_sequences):
            b1 = min(batch, b0 + chunk_sequences)
            rows = hidden[b0:b1].reshape(-1, width)
            logits = torch.mm(rows, weight.t())
            chunk_logp, chunk_entropy = rapo_token_forward(
                logits.view(b1 - b0, seq_len, vocab),
                ids[b0:b1],
                valid[b0:b1],
                None if old_logp is None else old_logp[b0:b1],
                None if ref_logp is None else ref_logp[b0:b1],
                advantages[b0:b1],
                token_weight[b0:b1],
                hp,
                backend=backend,
                write_grad=write_grad,
                grad=logits.view(b1 - b0, seq_len, vocab) if write_grad else None,
                block_v=block_v,
            )
            logp[b0:b1] = chunk_logp
            entropy[b0:b1] = chunk_entropy
            if need_hidden_grad:
                torch.mm(logits, weight, out=grad_hidden[b0:b1].view(-1, width))
            if need_weight_grad:
                _accumulate_weight_grad(grad_weight, logits, rows)
            del logits
        if grad_weight is not None and grad_weight.dtype != weight.dtype:
            grad_weight = grad_weight.to(weight.dtype)
        loss = weighted_token_loss(
            logp, valid, old_logp, ref_logp, advantages.unsqueeze(-1), token_weight, hp
        )
        ctx.grads = (grad_hidden, grad_weight)
        ctx.backend = backend
        ctx.mark_non_differentiable(logp, entropy)
        return loss, logp, entropy

    @staticmethod
    def backward(ctx, grad_loss, _grad_logp, _grad_entropy):
        if ctx.grads is None:
            raise RuntimeError(
                "rapo_loss_from_hidden computes its gradients in the forward; "
                "it can be back-propagated only once"
            )
        grad_hidden, grad_weight = ctx.grads
        ctx.grads = None
        for grad in (grad_hidden, grad_weight):
            if grad is not None:
                scale_grad_(grad, grad_loss, ctx.backend)
        return (grad_hidden, grad_weight) + (None,) * 13
