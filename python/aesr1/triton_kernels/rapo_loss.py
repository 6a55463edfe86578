"""Fused RAPO token loss (paper Eq. 10-12): log-prob, ratio, clip-higher, k3 KL, entropy and the
gradient w.r.t. the logits, in one kernel, beside its fp32 PyTorch reference.

Why the gradient is computed in the forward: the loss of token t depends on its logits only through
logp_t, so d loss / d logits_t = g_t * (onehot(id_t) - softmax_t) / temperature with a scalar
g_t = d loss / d logp_t that is known as soon as logp_t is. One online pass over the vocabulary gives
log-sum-exp and entropy, a second pass writes d logits, optionally in place over the logits; the
backward only multiplies by the incoming scalar gradient, and skips even that on the GPU when it is 1.
When the second pass finds the row still in L2 (the persistent grid keeps few rows in flight for
that) the HBM traffic is ~4 bytes per bf16 logit; otherwise 6, like kernels that read the logits in
the forward and again in the backward.

Everything here works on normalised inputs (see `rapo_token_forward`); `aesr1.loss` validates user
input, builds the aggregation weights and is the public API.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from aesr1.loss_config import RapoLossConfig

from ._launch import kernels_interpreted, tl, triton

__all__ = [
    "KL_LOG_RATIO_CLAMP",
    "KL_VALUE_CLAMP",
    "LAUNCH",
    "KernelLaunch",
    "RapoHyperparams",
    "RapoLossFunction",
    "TokenTerms",
    "dloss_dlogp",
    "k3_kl",
    "pick_block_v",
    "rapo_loss_reference",
    "rapo_token_forward",
    "scale_grad_",
    "token_terms",
    "triton_runs_on",
    "weighted_token_loss",
]

# verl's "low_var_kl" clamps (verl/trainer/ppo/core_algos.py, kl_penalty): the log-ratio ref - logp to
# [-20, 20] before the exponential, the k3 value to [-10, 10]; clamped entries get no gradient.
KL_LOG_RATIO_CLAMP = 20.0
KL_VALUE_CLAMP = 10.0

# The PyTorch path materialises fp32 copies of this many logits at a time, bounding its memory.
_TORCH_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class RapoHyperparams:
    """Scalars of the RAPO objective (paper Eq. 10-12 and Appendix C), defaults from `RapoLossConfig`.

    temperature: logits are divided by it before the softmax.
    eps_low, eps_high: clip range [1 - eps_low, 1 + eps_high] of the ratio (DAPO clip-higher).
    beta: coefficient of the k3 KL penalty (Eq. 12).
    kl_clamp: apply verl's low_var_kl clamps (`KL_LOG_RATIO_CLAMP`, `KL_VALUE_CLAMP`) to the KL term.
    """

    temperature: float = RapoLossConfig.temperature
    eps_low: float = RapoLossConfig.eps_low
    eps_high: float = RapoLossConfig.eps_high
    beta: float = RapoLossConfig.beta
    kl_clamp: bool = RapoLossConfig.kl_clamp


class TokenTerms(NamedTuple):
    ratio: torch.Tensor
    surrogate: torch.Tensor  # min(r A, clip(r) A), the quantity Eq. 10 maximises
    kl: torch.Tensor | None  # k3 estimate of KL(pi_theta || pi_ref), Eq. 12; None without ref_logp
    clipped_low: torch.Tensor  # ratio < 1 - eps_low with A < 0: the clip is what the gradient sees
    clipped_high: torch.Tensor  # ratio > 1 + eps_high with A > 0


def k3_kl(ref_logp: torch.Tensor, logp: torch.Tensor, clamp: bool) -> torch.Tensor:
    """Eq. 12: pi_ref/pi - log(pi_ref/pi) - 1, optionally with verl's low_var_kl clamps."""
    log_ratio = ref_logp - logp
    if clamp:
        log_ratio = log_ratio.clamp(-KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP)
    kl = torch.exp(log_ratio) - log_ratio - 1.0
    if clamp:
        kl = kl.clamp(-KL_VALUE_CLAMP, KL_VALUE_CLAMP)
    return kl


def token_terms(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    hp: RapoHyperparams,
) -> TokenTerms:
    """Per-token terms of Eq. 10-12; `advantages` broadcasts against `logp`.

    Without `old_logp` the update is on-policy: old = logp.detach(), so the ratio is exactly 1.
    """
    old = logp.detach() if old_logp is None else old_logp
    ratio = torch.exp(logp - old)
    clipped_ratio = ratio.clamp(1.0 - hp.eps_low, 1.0 + hp.eps_high)
    surrogate = torch.minimum(ratio * advantages, clipped_ratio * advantages)
    kl = None if ref_logp is None else k3_kl(ref_logp, logp, hp.kl_clamp)
    return TokenTerms(
        ratio=ratio,
        surrogate=surrogate,
        kl=kl,
        clipped_low=(ratio < 1.0 - hp.eps_low) & (advantages < 0),
        clipped_high=(ratio > 1.0 + hp.eps_high) & (advantages > 0),
    )


def weighted_token_loss(
    logp: torch.Tensor,
    valid: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    weight: torch.Tensor,
    hp: RapoHyperparams,
) -> torch.Tensor:
    """sum_t weight_t * (-surrogate_t + beta * kl_t) over valid tokens (the negated Eq. 10 objective).

    `torch.where` rather than a product with the mask: padding may hold inf/NaN log-probs.
    """
    terms = token_terms(logp, old_logp, ref_logp if hp.beta != 0.0 else None, advantages, hp)
    per_token = -terms.surrogate
    if hp.beta != 0.0:
        per_token = per_token + hp.beta * terms.kl
    return torch.where(valid, weight * per_token, torch.zeros_like(per_token)).sum()


def dloss_dlogp(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    hp: RapoHyperparams,
) -> torch.Tensor:
    """d(-surrogate + beta * kl)/d logp per token, the scalar the kernel scales d logp/d logits by.

    The unclipped branch of min(r A, clip(r) A) is the active one when A >= 0 and r <= 1 + eps_high
    or A < 0 and r >= 1 - eps_low (at the bounds autograd of min/clamp also gives the full r A).
    """
    ratio = torch.ones_like(logp) if old_logp is None else torch.exp(logp - old_logp)
    active = ((advantages >= 0) & (ratio <= 1.0 + hp.eps_high)) | (
        (advantages < 0) & (ratio >= 1.0 - hp.eps_low)
    )
    grad = torch.where(active, -advantages * ratio, torch.zeros_like(ratio))
    if hp.beta != 0.0 and ref_logp is not None:
        log_ratio = ref_logp - logp
        if hp.kl_clamp:
            clamped = log_ratio.clamp(-KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP)
            exp_ratio = torch.exp(clamped)
            keep = (
                (exp_ratio - clamped - 1.0 <= KL_VALUE_CLAMP)
                & (log_ratio >= -KL_LOG_RATIO_CLAMP)
                & (log_ratio <= KL_LOG_RATIO_CLAMP)
            )
            kl_grad = torch.where(keep, 1.0 - exp_ratio, torch.zeros_like(exp_ratio))
        else:
            kl_grad = 1.0 - torch.exp(log_ratio)
        grad = grad + hp.beta * kl_grad
    return grad


@dataclass
class KernelLaunch:
    """Launch parameters of the token kernel on CUDA; `benches/bench_loss.py --sweep` measures others.

    max_block_v: vocabulary tile per loop step (a power of two).
    num_warps: warps per program.
    programs_per_sm: persistent programs per SM. A row's logits must survive in L2 from the first
        pass to the second; the rows in flight (programs x V x bytes) compete for it.
    num_stages: software-pipelining depth of the vocabulary loops (None: Triton's default).
    """

    max_block_v: int = 4096
    num_warps: int = 8
    programs_per_sm: int = 1
    num_stages: int | None = None


LAUNCH = KernelLaunch()
# Programs of the interpreter: fewer than rows, so that CPU tests walk the persistent loop too.
_INTERPRETER_PROGRAMS = 3


def pick_block_v(vocab_size: int) -> int:
    return max(16, min(LAUNCH.max_block_v, 1 << (vocab_size - 1).bit_length()))


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _grid(n_rows: int, device: torch.device) -> tuple[int]:
    if device.type == "cuda" and not kernels_interpreted(_RAPO_TOKEN_KERNEL):
        index = device.index if device.index is not None else torch.cuda.current_device()
        return (max(1, min(n_rows, _sm_count(index) * LAUNCH.programs_per_sm)),)
    return (max(1, min(n_rows, _INTERPRETER_PROGRAMS)),)


def _launch_options(block_v: int) -> dict:
    options = {"num_warps": LAUNCH.num_warps if block_v >= 2048 else 4}
    if LAUNCH.num_stages is not None:
        options["num_stages"] = LAUNCH.num_stages
    return options


# --------------------------------------------------------------------------------------------------
# PyTorch reference of the kernel (fp32), also the CPU backend.
# --------------------------------------------------------------------------------------------------


def _forward_torch(logits, ids, valid, old, ref, adv, weight, hp, write_grad, grad):
    batch, seq_len, vocab = logits.shape
    inv_temp = 1.0 / hp.temperature
    has_kl = hp.beta != 0.0 and ref is not None
    logp = torch.zeros(batch, seq_len, dtype=torch.float32, device=logits.device)
    entropy = torch.zeros_like(logp)
    rows = max(1, _TORCH_CHUNK_ELEMENTS // vocab)
    for b in range(batch):
        for t0 in range(0, seq_len, rows):
            t1 = min(seq_len, t0 + rows)
            ok = valid[b, t0:t1]
            x = logits[b, t0:t1].float() * inv_temp
            shifted = x - x.amax(dim=-1, keepdim=True)  # not x - logsumexp(x): see the kernel
            log_probs = shifted - shifted.exp().sum(-1, keepdim=True).log()
            probs = log_probs.exp()
            ent = -torch.where(probs > 0, probs * log_probs, torch.zeros_like(probs)).sum(-1)
            tok = torch.where(ok, ids[b, t0:t1], torch.zeros_like(ids[b, t0:t1])).unsqueeze(-1)
            lp = log_probs.gather(-1, tok).squeeze(-1)
            logp[b, t0:t1] = torch.where(ok, lp, torch.zeros_like(lp))
            entropy[b, t0:t1] = torch.where(ok, ent, torch.zeros_like(ent))
            if not write_grad:
                continue
            g = dloss_dlogp(
                lp,
                None if old is None else old[b, t0:t1],
                ref[b, t0:t1] if has_kl else None,
                adv[b],
                hp,
            )
            scale = torch.where(ok, weight[b, t0:t1] * g * inv_temp, torch.zeros_like(g)).unsqueeze(-1)
            d_logits = -probs * scale
            d_logits.scatter_add_(-1, tok, scale)
            d_logits = torch.where(ok.unsqueeze(-1), d_logits, torch.zeros_like(d_logits))
            grad[b, t0:t1].copy_(d_logits)
    return logp, entropy


# --------------------------------------------------------------------------------------------------
# Triton kernel.
# --------------------------------------------------------------------------------------------------


def _rapo_token_kernel(
    logits_ptr,
    stride_lb,
    stride_lt,
    grad_ptr,
    stride_gb,
    stride_gt,
    ids_ptr,
    valid_ptr,
    old_ptr,
    ref_ptr,
    adv_ptr,
    weight_ptr,
    logp_ptr,
    entropy_ptr,
    n_rows,
    T,
    V,
    inv_temp,
    eps_low,
    eps_high,
    beta,
    has_old,
    has_kl,
    kl_clamp,
    write_grad,
    BLOCK_V: tl.constexpr,
):
    # A 1-D persistent grid (no 65,535 limit): each program walks rows pid, pid + nprog, ... of the
    # flattened (B*T) batch. Few rows in flight keep a row's logits in L2 between the two passes.
    # The flags are runtime values (and not specialised) so that token_logprobs and the loss run the
    # same binary and produce bit-identical log-probs: on-policy ratios are exactly 1.
    cols = tl.arange(0, BLOCK_V)
    for row in tl.range(tl.program_id(0), n_rows, tl.num_programs(0)):
        b = row // T
        t = row - b * T
        logits_row = logits_ptr + b.to(tl.int64) * stride_lb + t.to(tl.int64) * stride_lt
        grad_row = grad_ptr + b.to(tl.int64) * stride_gb + t.to(tl.int64) * stride_gt
        valid = tl.load(valid_ptr + row)
        if valid != 0:
            tok = tl.load(ids_ptr + row)
            # Online log-sum-exp and entropy. m starts at -inf and the vocabulary tail is padded with
            # -inf (V is rarely a multiple of BLOCK_V, e.g. 151,936); where()s keep -inf * 0 out of sums.
            m = float("-inf")
            s = 0.0  # sum exp(x - m)
            w = 0.0  # sum exp(x - m) * (x - m), so that entropy = log s - w / s
            for start in tl.range(0, V, BLOCK_V):
                offs = start + cols
                x = (
                    tl.load(
                        logits_row + offs, mask=offs < V, other=float("-inf"), eviction_policy="evict_last"
                    ).to(tl.float32)
                    * inv_temp
                )
                m_new = tl.maximum(m, tl.max(x, axis=0))
                m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
                e = tl.exp(x - m_ref)
                shifted = tl.where(e > 0.0, x - m_ref, 0.0)
                alpha = tl.exp(m - m_ref)
                w = alpha * (w + tl.where(s > 0.0, m - m_ref, 0.0) * s) + tl.sum(e * shifted, axis=0)
                s = alpha * s + tl.sum(e, axis=0)
                m = m_new
            # Log-probs as (x - m) - log s, never through lse = m + log s: with logits near -1000 an
            # fp32 lse carries an absolute error of ~6e-5 that would reach every ratio.
            log_s = tl.log(s)
            x_tok = tl.load(logits_row + tok).to(tl.float32) * inv_temp
            logp = (x_tok - m) - log_s
            tl.store(logp_ptr + row, logp)
            tl.store(entropy_ptr + row, log_s - w / s)
            if write_grad != 0:
                old = logp
                if has_old != 0:
                    old = tl.load(old_ptr + row)
                ratio = tl.exp(logp - old)
                adv = tl.load(adv_ptr + b)
                active = ((adv >= 0.0) & (ratio <= 1.0 + eps_high)) | ((adv < 0.0) & (ratio >= 1.0 - eps_low))
                dlogp = tl.where(active, -adv * ratio, 0.0)
                if has_kl != 0:
                    log_ratio = tl.load(ref_ptr + row) - logp
                    if kl_clamp != 0:
                        clamped = tl.minimum(tl.maximum(log_ratio, -20.0), 20.0)
                        exp_ratio = tl.exp(clamped)
                        keep = (
                            (exp_ratio - clamped - 1.0 <= 10.0) & (log_ratio >= -20.0) & (log_ratio <= 20.0)
                        )
                        dlogp += beta * tl.where(keep, 1.0 - exp_ratio, 0.0)
                    else:
                        dlogp += beta * (1.0 - tl.exp(log_ratio))
                scale = tl.load(weight_ptr + row) * dlogp * inv_temp
                for start in tl.range(0, V, BLOCK_V):
                    offs = start + cols
                    x = (
                        tl.load(
                            logits_row + offs,
                            mask=offs < V,
                            other=float("-inf"),
                            eviction_policy="evict_first",
                        ).to(tl.float32)
                        * inv_temp
                    )
                    p = tl.exp((x - m) - log_s)
                    d = tl.where(offs == tok, 1.0 - p, -p) * scale
                    tl.store(
                        grad_row + offs,
                        d.to(grad_ptr.dtype.element_ty),
                        mask=offs < V,
                        eviction_policy="evict_first",
                    )
        else:
            # Padding: no reads, and a zero gradient row.
            tl.store(logp_ptr + row, 0.0)
            tl.store(entropy_ptr + row, 0.0)
            if write_grad != 0:
                zeros = tl.zeros([BLOCK_V], dtype=tl.float32).to(grad_ptr.dtype.element_ty)
                for start in tl.range(0, V, BLOCK_V):
                    offs = start + cols
                    tl.store(grad_row + offs, zeros, mask=offs < V, eviction_policy="evict_first")


def _scale_rows_kernel(ptr, stride_b, stride_t, T, V, factor_ptr, BLOCK_V: tl.constexpr):
    # Multiplies rows by a device scalar without a host sync, and moves no data when it is 1.
    row = tl.program_id(0)
    b = row // T
    t = row - b * T
    base = ptr + b.to(tl.int64) * stride_b + t.to(tl.int64) * stride_t
    factor = tl.load(factor_ptr).to(tl.float32)
    if factor != 1.0:
        cols = tl.arange(0, BLOCK_V)
        for start in tl.range(0, V, BLOCK_V):
            offs = start + cols
            x = tl.load(base + offs, mask=offs < V, other=0.0).to(tl.float32)
            tl.store(base + offs, (x * factor).to(ptr.dtype.element_ty), mask=offs < V)


if triton is not None:
    _RAPO_TOKEN_KERNEL = triton.jit(
        _rapo_token_kernel,
        do_not_specialize=["n_rows", "T", "has_old", "has_kl", "kl_clamp", "write_grad"],
    )
    _SCALE_ROWS_KERNEL = triton.jit(_scale_rows_kernel)
else:  # pragma: no cover
    _RAPO_TOKEN_KERNEL = _SCALE_ROWS_KERNEL = None


def triton_runs_on(device: torch.device) -> bool:
    """Whether the Triton kernels can take tensors on `device` in this process."""
    if triton is None:
        return False
    return device.type == "cuda" or kernels_interpreted(_RAPO_TOKEN_KERNEL)


def _forward_triton(logits, ids, valid, old, ref, adv, weight, hp, write_grad, grad, block_v):
    batch, seq_len, vocab = logits.shape
    block_v = block_v or pick_block_v(vocab)
    logp = torch.empty(batch, seq_len, dtype=torch.float32, device=logits.device)
    entropy = torch.empty_like(logp)
    has_kl = hp.beta != 0.0 and ref is not None
    placeholder = logp  # pointer for absent optional inputs; the kernel never reads it
    if not write_grad:  # the gradient-only inputs are never read either
        grad = logits
        adv = placeholder if adv is None else adv
        weight = placeholder if weight is None else weight
    _RAPO_TOKEN_KERNEL[_grid(batch * seq_len, logits.device)](
        logits,
        logits.stride(0),
        logits.stride(1),
        grad,
        grad.stride(0),
        grad.stride(1),
        ids,
        valid,
        placeholder if old is None else old,
        ref if has_kl else placeholder,
        adv,
        weight,
        logp,
        entropy,
        batch * seq_len,
        seq_len,
        vocab,
        1.0 / hp.temperature,
        float(hp.eps_low),
        float(hp.eps_high),
        float(hp.beta),
        int(old is not None),
        int(has_kl),
        int(hp.kl_clamp),
        int(write_grad),
        BLOCK_V=block_v,
        **_launch_options(block_v),
    )
    return logp, entropy


def rapo_token_forward(
    logits: torch.Tensor,
    ids: torch.Tensor,
    valid: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor | None,
    weight: torch.Tensor | None,
    hp: RapoHyperparams,
    *,
    backend: str,
    write_grad: bool,
    grad: torch.Tensor | None = None,
    block_v: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs and entropies (fp32, 0 on padding) and, if `write_grad`, d loss/d logits.

    Normalised inputs, all on one device: logits (B, T, V) with unit stride over V; ids (B, T) int64,
    valid (B, T) bool, old/ref (B, T) fp32 or None, advantages (B,) fp32, weight (B, T) fp32 — the
    aggregation weight of each token, so that loss = sum_t weight_t * (-surrogate_t + beta * kl_t).
    `grad` (B, T, V) receives the gradient; it may be `logits` itself (in place). Without
    `write_grad`, advantages, weight, old and ref are not read and may be None.
    """
    if write_grad and grad is None:
        raise ValueError("grad: a destination is needed when write_grad is set")
    if backend == "triton":
        return _forward_triton(
            logits,
            ids.contiguous(),
            valid.to(torch.int8).contiguous(),
            None if old_logp is None else old_logp.contiguous(),
            None if ref_logp is None else ref_logp.contiguous(),
            None if advantages is None else advantages.contiguous(),
            None if weight is None else weight.contiguous(),
            hp,
            write_grad,
            grad,
            block_v,
        )
    if backend == "torch":
        return _forward_torch(
            logits, ids, valid, old_logp, ref_logp, advantages, weight, hp, write_grad, grad
        )
    raise ValueError(f"backend: expected 'triton' or 'torch', got {backend!r}")


def scale_grad_(grad: torch.Tensor, factor: torch.Tensor, backend: str) -> torch.Tensor:
    """grad *= factor (a 0-d tensor) in place, the product taken in fp32 and rounded once (a bf16
    factor would bias every gradient by up to 2^-9); never a host sync. The Triton kernel on CUDA skips
    the multiplication on the device when factor is 1."""
    if backend == "triton" and grad.is_cuda and grad.dim() in (2, 3) and grad.stride(-1) == 1:
        view = grad if grad.dim() == 3 else grad.unsqueeze(0)
        batch, seq_len, width = view.shape
        block = pick_block_v(width)
        _SCALE_ROWS_KERNEL[(batch * seq_len,)](
            view,
            view.stride(0),
            view.stride(1),
            seq_len,
            width,
            factor.detach().reshape(()).to(torch.float32),
            BLOCK_V=block,
            num_warps=4 if block < 2048 else 8,
        )
        return grad
    factor32 = factor.detach().reshape(()).to(torch.float32)
    if grad.dtype in (torch.float32, torch.float64):
        return grad.mul_(factor32.to(grad.dtype))
    flat = grad.view(-1) if grad.is_contiguous() else None
    if flat is None:
        return grad.copy_(grad.float().mul_(factor32))
    for start in range(0, flat.numel(), _TORCH_CHUNK_ELEMENTS):
        part = flat[start : start + _TORCH_CHUNK_ELEMENTS]
        part.copy_(part.float().mul_(factor32))
    return grad


class ForwardGradients:
    """The gradients a fused loss makes in its forward, handed out once by its backward.

    The backward multiplies them by the incoming gradient (`scale_grad_`). fp16 gradients are the
    exception: d loss/d logits (a token weight ~1/tokens times a probability) would underflow in
    fp16 before a loss scaler multiplies it, so for them the forward keeps `recompute` instead,
    which the backward calls with the incoming gradient as an fp32 factor to fold into the fp32
    token weights: the gradients come out already scaled, rounded once (another pass over the
    logits).
    """

    def __init__(
        self,
        loss_name: str,
        backend: str,
        *,
        grads: tuple[torch.Tensor | None, ...] = (),
        recompute: Callable[[torch.Tensor], tuple[torch.Tensor | None, ...]] | None = None,
    ) -> None:
        self.loss_name = loss_name
        self.backend = backend
        self._grads = grads
        self._recompute = recompute
        self._handed_out = False

    @staticmethod
    def recomputed(dtype: torch.dtype, needs_grad: bool) -> bool:
        """Whether gradients computed in `dtype` are left to the backward's `recompute`."""
        return needs_grad and dtype == torch.float16

    def backward(self, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if self._handed_out:
            raise RuntimeError(
                f"{self.loss_name} computes its gradients in the forward; it can be back-propagated only once"
            )
        self._handed_out = True
        if self._recompute is not None:
            recompute, self._recompute = self._recompute, None  # frees what it holds once used
            return recompute(grad_loss.detach().to(torch.float32))
        grads, self._grads = self._grads, ()
        for grad in grads:
            if grad is not None:
                scale_grad_(grad, grad_loss, self.backend)
        return grads


def _token_gradient(logits, ids, valid, old_logp, ref_logp, advantages, weight, hp, backend, inplace,
                    block_v, factor):  # fmt: skip
    grad = logits if inplace else torch.empty_like(logits)
    rapo_token_forward(
        logits, ids, valid, old_logp, ref_logp, advantages, weight * factor, hp,
        backend=backend, write_grad=True, grad=grad, block_v=block_v,
    )  # fmt: skip
    return (grad,)


class RapoLossFunction(torch.autograd.Function):
    """loss = sum_t weight_t * (-surrogate_t + beta * kl_t); also returns per-token logp and entropy.

    The gradient is produced by the forward (into a new buffer, or over `logits` when `inplace`), so
    the backward can run once only; `logp` and `entropy` are not differentiable. fp16 logits get
    theirs from the backward instead (`ForwardGradients`).
    """

    @staticmethod
    def forward(
        ctx,
        logits,
        ids,
        valid,
        old_logp,
        ref_logp,
        advantages,
        weight,
        hp,
        backend,
        inplace,
        block_v,
        write_grad,
    ):
        recomputed = ForwardGradients.recomputed(logits.dtype, write_grad)
        grad = None
        if write_grad and not recomputed:
            grad = logits.detach() if inplace else torch.empty_like(logits)
        logp, entropy = rapo_token_forward(
            logits,
            ids,
            valid,
            old_logp,
            ref_logp,
            advantages,
            weight,
            hp,
            backend=backend,
            write_grad=write_grad and not recomputed,
            grad=grad,
            block_v=block_v,
        )
        if write_grad and inplace and backend == "triton" and not recomputed:
            # The kernel's writes are invisible to autograd: bump the version counter so that a graph
            # node that saved these logits raises instead of silently using gradients as logits.
            torch.autograd.graph.increment_version(logits)
        loss = weighted_token_loss(logp, valid, old_logp, ref_logp, advantages.unsqueeze(-1), weight, hp)
        if recomputed:
            recompute = functools.partial(
                _token_gradient, logits.detach(), ids, valid, old_logp, ref_logp, advantages, weight, hp,
                backend, inplace, block_v,
            )  # fmt: skip
            ctx.gradients = ForwardGradients("rapo_loss", backend, recompute=recompute)
        else:
            ctx.gradients = ForwardGradients("rapo_loss", backend, grads=(grad,))
        ctx.mark_non_differentiable(logp, entropy)
        return loss, logp, entropy

    @staticmethod
    def backward(ctx, grad_loss, _grad_logp, _grad_entropy):
        return ctx.gradients.backward(grad_loss) + (None,) * 11


def rapo_loss_reference(
    logits: torch.Tensor,
    ids: torch.Tensor,
    valid: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    weight: torch.Tensor,
    hp: RapoHyperparams,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eager PyTorch, autograd through log_softmax in fp32 (or the input's precision if higher).

    The plain formulation the fused kernels are checked and benchmarked against; materialises
    several (B, T, V) fp32 tensors. Returns (loss, logp, entropy) like `RapoLossFunction`.
    """
    compute_dtype = torch.promote_types(logits.dtype, torch.float32)
    x = logits.to(compute_dtype) / hp.temperature
    log_probs = torch.log_softmax(x, dim=-1)
    safe_ids = torch.where(valid, ids, torch.zeros_like(ids))
    logp = log_probs.gather(-1, safe_ids.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        probs = log_probs.exp()
        entropy = -torch.where(probs > 0, probs * log_probs, torch.zeros_like(probs)).sum(-1)
    loss = weighted_token_loss(
        logp,
        valid,
        None if old_logp is None else old_logp.to(compute_dtype),
        None if ref_logp is None else ref_logp.to(compute_dtype),
        advantages.to(compute_dtype).unsqueeze(-1),
        weight.to(compute_dtype),
        hp,
    )
    zeros = torch.zeros_like(logp)
    return loss, torch.where(valid, logp, zeros).detach(), torch.where(valid, entropy, zeros)
