"""RAPO loss from the last hidden states and the lm_head weight, never materialising all logits.

Whole sequences are processed in chunks: one GEMM gives the chunk's logits, the token kernel of
`rapo_loss` turns them into d loss/d logits in place, then dX = dlogits @ W and dW += dlogits^T @ X.
Three GEMMs in all, the same count as an unfused lm_head + loss; the extra memory is one chunk of
logits plus dX and dW.

Precision contract (`compute_dtype` is the GEMM operand dtype: the autocast dtype where autocast is
on for the device, as `nn.Linear` would run, else the inputs' dtype):

- logits: one GEMM per chunk with compute-dtype operands and fp32 accumulation, rounded once to the
  compute dtype; log-probs, entropies and d loss/d logits are computed from them in fp32, and
  d loss/d logits is rounded once to the compute dtype;
- dX: one GEMM per chunk (fp32 accumulation), rounded once to the compute dtype, then converted to
  the hidden states' dtype (exactly, when that is wider);
- dW: each chunk's product accumulates in fp32; chunks are summed in `weight_grad_dtype` (the
  weight's dtype unless asked otherwise: an fp32 accumulator for a bf16 vocabulary x hidden matrix
  would alone cost 4 bytes per weight). An fp32 accumulator receives each chunk's product without
  an intermediate rounding to the compute dtype, so it sums in fp32;
- fp16 compute: d loss/d logits is tiny (a token weight ~1/tokens times a probability) and would
  underflow in fp16 before a loss scaler could scale it, so with fp16 the gradients are not made in
  the forward: the backward recomputes each chunk's logits (a fourth GEMM) and writes gradients
  already multiplied by the incoming factor, computed in fp32 and rounded once.

On CPU the same chunked algorithm runs with the PyTorch reference of the token kernel.
"""

from __future__ import annotations

import functools

import torch

from .rapo_loss import ForwardGradients, RapoHyperparams, rapo_token_forward, weighted_token_loss

__all__ = ["FusedLinearRapoFunction", "compute_dtype", "default_chunk_sequences"]

# Target size of one chunk of logits; at T = 1024 and V = 151,936 in bf16 this is one sequence.
_CHUNK_BYTES = 384 * 1024 * 1024
# Vocabulary rows per step when a mixed-precision dW accumulation has to go through a temporary.
_DW_SLICE_ROWS = 16384


def default_chunk_sequences(seq_len: int, vocab_size: int, element_size: int) -> int:
    return max(1, _CHUNK_BYTES // max(1, seq_len * vocab_size * element_size))


def compute_dtype(device: torch.device, input_dtype: torch.dtype) -> torch.dtype:
    """The GEMM operand dtype: the autocast dtype where autocast is enabled for `device`, else the
    inputs' dtype (what `nn.Linear` on the same inputs would use)."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return input_dtype


@functools.cache
def _mixed_addmm_supported(device_type: str, dtype: torch.dtype) -> bool:
    """Whether `torch.addmm(..., out_dtype=float32)` takes `dtype` operands on this device type
    (cuBLAS does for bf16/fp16); probed once on tiny tensors, never by failing a real call."""
    try:
        with torch.autocast(device_type, enabled=False):
            a = torch.ones(2, 2, dtype=dtype, device=device_type)
            acc = torch.zeros(2, 2, dtype=torch.float32, device=device_type)
            torch.addmm(acc, a, a, out_dtype=torch.float32, out=acc)
        return bool(acc[0, 0].item() == 2.0)
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def _accumulate_weight_grad(acc: torch.Tensor, grad_logits: torch.Tensor, hidden: torch.Tensor) -> None:
    """acc += grad_logits^T @ hidden, the product accumulated in fp32 and added to `acc` without
    rounding it to the operands' dtype first."""
    if acc.dtype == grad_logits.dtype:
        acc.addmm_(grad_logits.t(), hidden)
        return
    if _mixed_addmm_supported(acc.device.type, grad_logits.dtype):
        torch.addmm(acc, grad_logits.t(), hidden, out_dtype=acc.dtype, out=acc)
        return
    # fp32 operands (bf16/fp16 -> fp32 is exact), one vocabulary slice at a time: bounded temporaries.
    hidden32 = hidden.to(acc.dtype)
    for v0 in range(0, acc.shape[0], _DW_SLICE_ROWS):
        v1 = min(acc.shape[0], v0 + _DW_SLICE_ROWS)
        acc[v0:v1].addmm_(grad_logits[:, v0:v1].t().to(acc.dtype), hidden32)


def _chunked_pass(
    hidden, weight, ids, valid, old_logp, ref_logp, advantages, token_weight, hp, backend, chunk_sequences,
    gemm_dtype, weight_grad_dtype, block_v, need_hidden_grad, need_weight_grad,
):  # fmt: skip
    """One pass over the chunks: (logp, entropy, grad_hidden, grad_weight); gradients are those of
    sum_t token_weight_t * loss_t (None where not needed). Runs with autocast off: dtypes are explicit."""
    batch, seq_len, width = hidden.shape
    vocab = weight.shape[0]
    write_grad = need_hidden_grad or need_weight_grad
    w = weight.to(gemm_dtype)
    logp = torch.empty(batch, seq_len, dtype=torch.float32, device=hidden.device)
    entropy = torch.empty_like(logp)
    grad_hidden = (
        torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device) if need_hidden_grad else None
    )
    grad_weight = None
    if need_weight_grad:
        grad_weight = torch.zeros(vocab, width, dtype=weight_grad_dtype or weight.dtype, device=weight.device)
    for b0 in range(0, batch, chunk_sequences):
        b1 = min(batch, b0 + chunk_sequences)
        rows = hidden[b0:b1].reshape(-1, width).to(gemm_dtype)
        logits = torch.mm(rows, w.t())
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
            target = grad_hidden[b0:b1].view(-1, width)
            if target.dtype == gemm_dtype:
                torch.mm(logits, w, out=target)
            else:
                target.copy_(torch.mm(logits, w))
        if need_weight_grad:
            _accumulate_weight_grad(grad_weight, logits, rows)
        del logits
    if grad_weight is not None and grad_weight.dtype != weight.dtype:
        grad_weight = grad_weight.to(weight.dtype)
    return logp, entropy, grad_hidden, grad_weight


def _recomputed_gradients(hidden, weight, ids, valid, old_logp, ref_logp, advantages, token_weight, hp, backend,
                          chunk_sequences, gemm_dtype, weight_grad_dtype, block_v, need_hidden_grad,
                          need_weight_grad, factor):  # fmt: skip
    scaled = token_weight * factor
    with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
        _, _, grad_hidden, grad_weight = _chunked_pass(
            hidden, weight, ids, valid, old_logp, ref_logp, advantages, scaled, hp, backend, chunk_sequences,
            gemm_dtype, weight_grad_dtype, block_v, need_hidden_grad, need_weight_grad,
        )  # fmt: skip
    return grad_hidden, grad_weight


class FusedLinearRapoFunction(torch.autograd.Function):
    """(loss, logp, entropy) of `RapoLossFunction` for logits = hidden @ weight^T, computed in chunks.

    Inputs as `rapo_token_forward`, with hidden (B, T, H) and weight (V, H) of one dtype, and
    `gemm_dtype` from `compute_dtype` (see the module docstring). The gradients w.r.t. both are
    produced by the forward and scaled by the backward (once only), except with fp16 GEMMs, where
    the backward produces them already scaled (`ForwardGradients`).
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
        gemm_dtype: torch.dtype,
    ):
        recomputed = ForwardGradients.recomputed(gemm_dtype, need_hidden_grad or need_weight_grad)
        with torch.autocast(hidden.device.type, enabled=False):
            logp, entropy, grad_hidden, grad_weight = _chunked_pass(
                hidden, weight, ids, valid, old_logp, ref_logp, advantages, token_weight, hp, backend,
                chunk_sequences, gemm_dtype, weight_grad_dtype, block_v,
                need_hidden_grad and not recomputed, need_weight_grad and not recomputed,
            )  # fmt: skip
        loss = weighted_token_loss(
            logp, valid, old_logp, ref_logp, advantages.unsqueeze(-1), token_weight, hp
        )
        if recomputed:
            recompute = functools.partial(
                _recomputed_gradients, hidden, weight, ids, valid, old_logp, ref_logp, advantages, token_weight,
                hp, backend, chunk_sequences, gemm_dtype, weight_grad_dtype, block_v, need_hidden_grad,
                need_weight_grad,
            )  # fmt: skip
            ctx.gradients = ForwardGradients("rapo_loss_from_hidden", backend, recompute=recompute)
        else:
            ctx.gradients = ForwardGradients(
                "rapo_loss_from_hidden", backend, grads=(grad_hidden, grad_weight)
            )
        ctx.mark_non_differentiable(logp, entropy)
        return loss, logp, entropy

    @staticmethod
    def backward(ctx, grad_loss, _grad_logp, _grad_entropy):
        return ctx.gradients.backward(grad_loss) + (None,) * 14
