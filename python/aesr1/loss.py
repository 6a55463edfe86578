"""RAPO policy loss (paper Eq. 10-12): the public API over the fused kernels of `aesr1.triton_kernels`.

Per valid token t of completion k, with logp = log_softmax(logits / temperature)[id] in fp32:

    r = exp(logp - old_logp)                                              (Eq. 11)
    surrogate = min(r A_k, clip(r, 1 - eps_low, 1 + eps_high) A_k)        (DAPO clip-higher)
    kl = exp(ref_logp - logp) - (ref_logp - logp) - 1                     (Eq. 12, k3)
    loss = sum_t weight_t * (-surrogate_t + beta * kl_t)                  (negated Eq. 10)

The aggregation chooses weight_t:

- "seq-mean-token-mean" (Eq. 10, default): 1 / (|o_k| * num_sequences), a token mean per sequence,
  then a mean over sequences;
- "token-mean" (DAPO): 1 / num_tokens;
- "seq-mean-token-sum-norm" (Dr. GRPO): 1 / (num_sequences * max_completion_length).

num_sequences defaults to the batch size B (an all-padding sequence counts but adds nothing),
num_tokens to the valid tokens of the batch, max_completion_length to T. Pass the global counts when
one optimiser step sums losses over several micro-batches or processes: with them the summed
losses and gradients equal those of the one big batch.

Backends: "triton" (fused kernels; CUDA, or CPU tensors in a process started with
TRITON_INTERPRET=1), "torch" (the same algorithm in plain PyTorch, fp32), "auto" = triton on CUDA,
torch elsewhere. Both compute the gradient in the forward (with fp16, in the backward, already
multiplied by the incoming factor so a loss scaler's scale is applied before the fp16 rounding);
backward may run once. The gradient is computed in fp32 and rounded once to the logits' dtype.
"""

from __future__ import annotations

import torch

from aesr1.loss_config import AGGREGATIONS, BACKENDS, Aggregation, Backend, RapoLossConfig
from aesr1.triton_kernels._launch import triton_available
from aesr1.triton_kernels.fused_linear_rapo import (
    FusedLinearRapoFunction,
    compute_dtype,
    default_chunk_sequences,
)
from aesr1.triton_kernels.rapo_loss import (
    KL_LOG_RATIO_CLAMP,
    KL_VALUE_CLAMP,
    RapoHyperparams,
    RapoLossFunction,
    token_terms,
    triton_runs_on,
)
from aesr1.triton_kernels.token_logprobs import token_logprobs_forward

__all__ = [
    "AGGREGATIONS",
    "BACKENDS",
    "KL_LOG_RATIO_CLAMP",
    "KL_VALUE_CLAMP",
    "METRIC_NAMES",
    "RapoLossConfig",
    "rapo_loss",
    "rapo_loss_from_hidden",
    "raise_for_checks",
    "token_logprobs",
]

METRIC_NAMES: tuple[str, ...] = (
    "kl",
    "clip_frac_low",
    "clip_frac_high",
    "entropy",
    "ratio_mean",
    "ratio_min",
    "ratio_max",
)
_LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# --------------------------------------------------------------------------------------------------
# Validation: every check runs before a kernel launch; value checks share a single host sync.
# --------------------------------------------------------------------------------------------------


def _require_tensor(name: str, value, ndim: int, shape: tuple[int, ...] | None, device) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(value.shape)}")
    if shape is not None and tuple(value.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(value.shape)}")
    if device is not None and value.device != device:
        raise ValueError(f"{name}: on {value.device}, expected {device} like the logits")
    return value


def _require_float(name: str, value: torch.Tensor) -> None:
    if not value.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {value.dtype}")


def _check_scalars(temperature, eps_low, eps_high, beta, aggregation) -> None:
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
    if not (isinstance(eps_low, (int, float)) and 0 <= eps_low < 1):
        raise ValueError(f"eps_low: expected a number in [0, 1), got {eps_low!r}")
    if not (isinstance(eps_high, (int, float)) and eps_high >= 0):
        raise ValueError(f"eps_high: expected a non-negative number, got {eps_high!r}")
    if not (isinstance(beta, (int, float)) and beta >= 0):
        raise ValueError(f"beta: expected a non-negative number, got {beta!r}")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation: expected one of {AGGREGATIONS}, got {aggregation!r}")


def _check_count(name: str, value, device) -> None:
    if value is None:
        return
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name}: expected a scalar, got shape {tuple(value.shape)}")
        if value.device != device:
            raise ValueError(f"{name}: on {value.device}, expected {device} like the logits")
        return  # its sign is checked with the other device values
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")


def raise_for_checks(checks: list[tuple[str, torch.Tensor]], flags: list | None = None) -> None:
    """Run the value checks that `rapo_loss(..., deferred_checks=checks)` appended instead of running:
    raise for the first whose device flag is set, with one host sync in all, or none when the caller
    read the flags itself (`flags`: their host values, in order, read with its other values)."""
    if flags is None:
        _check_values(checks)
        return
    if len(flags) != len(checks):
        raise ValueError(f"flags: expected {len(checks)} values, one per check, got {len(flags)}")
    for (message, _), bad in zip(checks, flags, strict=True):
        if bad:
            raise ValueError(message)


def _check_values(checks: list[tuple[str, torch.Tensor]]) -> None:
    """Raise for the first (message, flag) whose device flag is set; one host sync in all."""
    if not checks or torch.compiler.is_compiling():
        return
    flags = torch.stack([flag.reshape(()).to(torch.bool) for _, flag in checks]).tolist()
    for (message, _), bad in zip(checks, flags, strict=True):
        if bad:
            raise ValueError(message)


def _normalise_mask(mask: torch.Tensor, checks: list) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex():
        raise ValueError(f"mask: expected bool or real 0/1 values, got {mask.dtype}")
    checks.append(("mask: values must be 0 or 1", ((mask != 0) & (mask != 1)).any()))
    return mask != 0


def _ids_checks(name: str, ids: torch.Tensor, valid: torch.Tensor | None, vocab: int, checks: list) -> None:
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise ValueError(f"{name}: expected an integer tensor, got {ids.dtype}")
    out = (ids < 0) | (ids >= vocab)
    if valid is not None:
        out = out & valid
    checks.append((f"{name}: token ids must lie in [0, {vocab}) where the mask is set", out.any()))


def _finite_checks(name: str, values: torch.Tensor, valid: torch.Tensor, checks: list) -> None:
    checks.append((f"{name}: must be finite on valid tokens", (valid & ~torch.isfinite(values)).any()))


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "torch":
        return backend
    if backend != "triton":
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if not triton_available():
        raise ValueError("backend: 'triton' requested but Triton is not installed")
    if not triton_runs_on(device):
        raise ValueError(
            "backend: 'triton' on CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 "
            "before aesr1 is imported"
        )
    return backend


def _token_weights(
    valid: torch.Tensor,
    aggregation: str,
    num_sequences,
    num_tokens,
    max_completion_length,
    checks: list,
) -> torch.Tensor:
    """weight_t of each token such that loss = sum_t weight_t * per_token_loss_t (see module doc)."""
    batch, seq_len = valid.shape
    mask = valid.to(torch.float32)
    if isinstance(num_sequences, torch.Tensor):
        checks.append(("num_sequences: must be positive", ~(num_sequences > 0)))
        num_sequences = num_sequences.to(torch.float32).reshape(())
    elif num_sequences is None:
        num_sequences = float(batch)
    if aggregation == "seq-mean-token-mean":
        lengths = mask.sum(-1, keepdim=True).clamp(min=1.0)
        return mask / (lengths * num_sequences)
    if aggregation == "token-mean":
        if isinstance(num_tokens, torch.Tensor):
            checks.append(("num_tokens: must be positive", ~(num_tokens > 0)))
            num_tokens = num_tokens.to(torch.float32).reshape(())
        elif num_tokens is None:
            num_tokens = mask.sum().clamp(min=1.0)
        return mask / num_tokens
    length = float(seq_len if max_completion_length is None else max_completion_length)
    return mask / (num_sequences * length)


def _prepare(
    logits_shape,
    device,
    completion_ids,
    old_logp,
    ref_logp,
    advantages,
    mask,
    *,
    eps_low,
    eps_high,
    beta,
    temperature,
    aggregation,
    num_sequences,
    num_tokens,
    max_completion_length,
    kl_clamp,
    deferred_checks=None,
):
    batch, seq_len, vocab = logits_shape
    if batch == 0 or seq_len == 0:
        raise ValueError(f"logits: empty batch (shape {tuple(logits_shape)})")
    if vocab == 0:
        raise ValueError("logits: empty vocabulary dimension")
    _check_scalars(temperature, eps_low, eps_high, beta, aggregation)
    _check_count("num_sequences", num_sequences, device)
    _check_count("num_tokens", num_tokens, device)
    if max_completion_length is not None and (
        isinstance(max_completion_length, bool)
        or not isinstance(max_completion_length, (int, float))
        or not max_completion_length > 0
    ):
        raise ValueError(f"max_completion_length: expected a positive number, got {max_completion_length!r}")
    bt = (batch, seq_len)
    _require_tensor("completion_ids", completion_ids, 2, bt, device)
    _require_tensor("mask", mask, 2, bt, device)
    _require_tensor("advantages", advantages, 1, (batch,), device)
    _require_float("advantages", advantages)
    if old_logp is not None:
        _require_tensor("old_logp", old_logp, 2, bt, device)
        _require_float("old_logp", old_logp)
    if ref_logp is not None:
        _require_tensor("ref_logp", ref_logp, 2, bt, device)
        _require_float("ref_logp", ref_logp)
    elif beta != 0:
        raise ValueError("ref_logp: required when beta != 0 (pass beta=0.0 to drop the KL term)")

    checks: list = []
    valid = _normalise_mask(mask, checks)
    _ids_checks("completion_ids", completion_ids, valid, vocab, checks)
    checks.append(("advantages: must be finite", ~torch.isfinite(advantages).all()))
    if old_logp is not None:
        _finite_checks("old_logp", old_logp, valid, checks)
    if ref_logp is not None:
        _finite_checks("ref_logp", ref_logp, valid, checks)
    weight = _token_weights(valid, aggregation, num_sequences, num_tokens, max_completion_length, checks)
    if deferred_checks is None:
        _check_values(checks)
    else:
        deferred_checks.extend(checks)

    hp = RapoHyperparams(
        temperature=float(temperature),
        eps_low=float(eps_low),
        eps_high=float(eps_high),
        beta=float(beta),
        kl_clamp=bool(kl_clamp),
    )
    as_f32 = lambda x: None if x is None else x.detach().to(torch.float32).contiguous()  # noqa: E731
    return (
        completion_ids.to(torch.int64).contiguous(),
        valid.contiguous(),
        as_f32(old_logp),
        as_f32(ref_logp),
        as_f32(advantages),
        weight.contiguous(),
        hp,
    )


@torch.no_grad()
def _metrics(logp, entropy, valid, old_logp, ref_logp, advantages, hp) -> dict[str, torch.Tensor]:
    """Means over valid tokens (NaN when there is none); kl is NaN without ref_logp."""
    terms = token_terms(logp, old_logp, ref_logp, advantages.unsqueeze(-1), hp)
    count = valid.sum().to(torch.float32)
    nan = torch.full((), float("nan"), device=logp.device)

    def mean(x: torch.Tensor) -> torch.Tensor:
        return torch.where(valid, x.to(torch.float32), torch.zeros((), device=x.device)).sum() / count

    def extreme(x: torch.Tensor, fill: float, reduce) -> torch.Tensor:
        value = reduce(torch.where(valid, x, torch.full((), fill, device=x.device)))
        return torch.where(count > 0, value, nan)

    return {
        "kl": nan if terms.kl is None else mean(terms.kl),
        "clip_frac_low": mean(terms.clipped_low),
        "clip_frac_high": mean(terms.clipped_high),
        "entropy": mean(entropy),
        "ratio_mean": mean(terms.ratio),
        "ratio_min": extreme(terms.ratio, float("inf"), torch.amin),
        "ratio_max": extreme(terms.ratio, float("-inf"), torch.amax),
    }


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def rapo_loss(
    logits: torch.Tensor,
    completion_ids: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = RapoLossConfig.eps_low,
    eps_high: float = RapoLossConfig.eps_high,
    beta: float = RapoLossConfig.beta,
    temperature: float = RapoLossConfig.temperature,
    aggregation: Aggregation = RapoLossConfig.aggregation,
    inplace: bool = False,
    kl_clamp: bool = RapoLossConfig.kl_clamp,
    num_sequences: int | float | torch.Tensor | None = None,
    num_tokens: int | float | torch.Tensor | None = None,
    max_completion_length: int | None = RapoLossConfig.max_completion_length,
    backend: Backend = RapoLossConfig.backend,
    deferred_checks: list | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RAPO policy loss (negated Eq. 10 with the Eq. 12 KL) and its metrics, from logits.

    logits: (B, T, V) bf16/fp16/fp32, `logits[:, t]` scoring `completion_ids[:, t]`; any strides
        over B and T (a slice of the model output needs no copy), unit stride over V.
    completion_ids: (B, T) integers in [0, V) wherever `mask` is set (padding may hold anything).
    old_logp: (B, T) log-probs of the sampling policy; None means on-policy (ratio exactly 1).
    ref_logp: (B, T) log-probs of the reference policy; may be None when beta == 0.
    advantages: (B,) one advantage per completion.
    mask: (B, T) bool or 0/1 values; 0 marks padding.
    inplace: write the gradient over `logits` during the forward (no (B, T, V) buffer). The logits
        are gradients afterwards: use it only when nothing else needs them.
    kl_clamp: verl's low_var_kl clamps on the KL term (`KL_LOG_RATIO_CLAMP`, `KL_VALUE_CLAMP`).
    num_sequences, num_tokens, max_completion_length: normalisers of the aggregation, see the
        module docstring; pass global values for gradient accumulation or data parallelism.
    backend: "auto", "triton" or "torch" (module docstring).
    deferred_checks: a list to append the checks of tensor values (ids in range, finite log-probs,
        0/1 mask) to instead of running them, each a host synchronisation on CUDA: a training loop
        collects those of its micro-batches and passes them to `raise_for_checks` once per step.
        Shapes, dtypes and scalars are always checked at once.

    Returns the scalar fp32 loss and a dict of detached scalar fp32 tensors (`METRIC_NAMES`): mean
    k3 KL, the fractions of tokens clipped low (r < 1 - eps_low, A < 0) and high (r > 1 + eps_high,
    A > 0), the mean token entropy of softmax(logits / temperature), and ratio mean/min/max, all over
    the valid tokens of this batch. The gradient reaches `logits` only.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits: expected a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 3:
        raise ValueError(f"logits: expected shape (B, T, V), got {tuple(logits.shape)}")
    if logits.dtype not in _LOGIT_DTYPES:
        raise ValueError(f"logits: expected one of {_LOGIT_DTYPES}, got {logits.dtype}")
    resolved = _resolve_backend(backend, logits.device)
    ids, valid, old, ref, adv, weight, hp = _prepare(
        logits.shape,
        logits.device,
        completion_ids,
        old_logp,
        ref_logp,
        advantages,
        mask,
        eps_low=eps_low,
        eps_high=eps_high,
        beta=beta,
        temperature=temperature,
        aggregation=aggregation,
        num_sequences=num_sequences,
        num_tokens=num_tokens,
        max_completion_length=max_completion_length,
        kl_clamp=kl_clamp,
        deferred_checks=deferred_checks,
    )
    write_grad = logits.requires_grad and torch.is_grad_enabled()
    if logits.stride(-1) != 1:
        if inplace and write_grad:
            raise ValueError("logits: inplace=True needs unit stride over the vocabulary dimension")
        logits = logits.contiguous()
    loss, logp, entropy = RapoLossFunction.apply(
        logits, ids, valid, old, ref, adv, weight, hp, resolved, bool(inplace), None, write_grad
    )
    return loss, _metrics(logp, entropy, valid, old, ref, adv, hp)


def rapo_loss_from_hidden(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    completion_ids: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = RapoLossConfig.eps_low,
    eps_high: float = RapoLossConfig.eps_high,
    beta: float = RapoLossConfig.beta,
    temperature: float = RapoLossConfig.temperature,
    aggregation: Aggregation = RapoLossConfig.aggregation,
    kl_clamp: bool = RapoLossConfig.kl_clamp,
    num_sequences: int | float | torch.Tensor | None = None,
    num_tokens: int | float | torch.Tensor | None = None,
    max_completion_length: int | None = RapoLossConfig.max_completion_length,
    chunk_size: int | None = None,
    weight_grad_dtype: torch.dtype | None = None,
    backend: Backend = RapoLossConfig.backend,
    deferred_checks: list | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`rapo_loss` for logits = hidden @ lm_head_weight^T, without materialising all the logits.

    hidden: (B, T, H) last hidden states aligned with `completion_ids` (position t scores token t).
    lm_head_weight: (V, H), same dtype and device as `hidden`; no bias.
    chunk_size: sequences per chunk (default: ~384 MiB of logits per chunk, at least one sequence).
    weight_grad_dtype: dtype of the cross-chunk dW accumulator (default: the weight's dtype; each
        chunk's GEMM accumulates in fp32 either way). torch.float32 sums in fp32 at 4 bytes/weight.

    Precision: the GEMMs take their operands in the autocast dtype when autocast is enabled for
    the device (as `nn.Linear` would), else in the inputs' dtype; each accumulates in fp32. The
    logits and d loss/d logits are rounded once to that dtype, dX once and then converted to
    `hidden`'s dtype, dW per chunk in fp32 into the `weight_grad_dtype` accumulator (full contract:
    `aesr1.triton_kernels.fused_linear_rapo`). So fp32 inputs under bf16 autocast run bf16 GEMMs
    and get fp32 gradients; without autocast fp32 inputs run fp32 GEMMs.

    Gradients reach `hidden` and `lm_head_weight` (whichever require grad); see `rapo_loss` for the
    other arguments and the returned metrics.
    """
    if not isinstance(hidden, torch.Tensor):
        raise TypeError(f"hidden: expected a torch.Tensor, got {type(hidden).__name__}")
    if hidden.dim() != 3:
        raise ValueError(f"hidden: expected shape (B, T, H), got {tuple(hidden.shape)}")
    if hidden.dtype not in _LOGIT_DTYPES:
        raise ValueError(f"hidden: expected one of {_LOGIT_DTYPES}, got {hidden.dtype}")
    _require_tensor("lm_head_weight", lm_head_weight, 2, None, hidden.device)
    if lm_head_weight.shape[1] != hidden.shape[2]:
        raise ValueError(
            f"lm_head_weight: expected shape (V, {hidden.shape[2]}) to match hidden, "
            f"got {tuple(lm_head_weight.shape)}"
        )
    if lm_head_weight.dtype != hidden.dtype:
        raise ValueError(f"lm_head_weight: dtype {lm_head_weight.dtype} differs from hidden's {hidden.dtype}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size!r}")
    if weight_grad_dtype not in (None, torch.float32, lm_head_weight.dtype):
        raise ValueError(
            f"weight_grad_dtype: expected None, torch.float32 or the weight's dtype, got {weight_grad_dtype}"
        )
    batch, seq_len, _ = hidden.shape
    vocab = lm_head_weight.shape[0]
    resolved = _resolve_backend(backend, hidden.device)
    ids, valid, old, ref, adv, weight, hp = _prepare(
        (batch, seq_len, vocab),
        hidden.device,
        completion_ids,
        old_logp,
        ref_logp,
        advantages,
        mask,
        eps_low=eps_low,
        eps_high=eps_high,
        beta=beta,
        temperature=temperature,
        aggregation=aggregation,
        num_sequences=num_sequences,
        num_tokens=num_tokens,
        max_completion_length=max_completion_length,
        kl_clamp=kl_clamp,
        deferred_checks=deferred_checks,
    )
    grad_on = torch.is_grad_enabled()
    need_hidden_grad = grad_on and hidden.requires_grad
    need_weight_grad = grad_on and lm_head_weight.requires_grad
    gemm_dtype = compute_dtype(hidden.device, hidden.dtype)
    element_size = torch.empty((), dtype=gemm_dtype).element_size()
    chunk = chunk_size or default_chunk_sequences(seq_len, vocab, element_size)
    loss, logp, entropy = FusedLinearRapoFunction.apply(
        hidden,
        lm_head_weight,
        ids,
        valid,
        old,
        ref,
        adv,
        weight,
        hp,
        resolved,
        chunk,
        weight_grad_dtype,
        None,
        need_hidden_grad,
        need_weight_grad,
        gemm_dtype,
    )
    return loss, _metrics(logp, entropy, valid, old, ref, adv, hp)


@torch.no_grad()
def token_logprobs(
    logits: torch.Tensor,
    completion_ids: torch.Tensor,
    temperature: float = RapoLossConfig.temperature,
    entropy: bool = False,
    *,
    mask: torch.Tensor | None = None,
    backend: Backend = RapoLossConfig.backend,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log_softmax(logits / temperature)[completion_ids] in fp32, (B, T); no gradient.

    The old and reference log-probs of RAPO: computed by the loss's own kernel, so that the ratio
    of an on-policy update is exactly 1. With `entropy=True` also returns the token entropies.
    `mask` (optional, (B, T)) skips padding, whose outputs are 0 and whose ids are not checked.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits: expected a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 3:
        raise ValueError(f"logits: expected shape (B, T, V), got {tuple(logits.shape)}")
    if logits.dtype not in _LOGIT_DTYPES:
        raise ValueError(f"logits: expected one of {_LOGIT_DTYPES}, got {logits.dtype}")
    batch, seq_len, vocab = logits.shape
    if batch == 0 or seq_len == 0 or vocab == 0:
        raise ValueError(f"logits: empty batch (shape {tuple(logits.shape)})")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
    _require_tensor("completion_ids", completion_ids, 2, (batch, seq_len), logits.device)
    checks: list = []
    if mask is None:
        valid = torch.ones(batch, seq_len, dtype=torch.bool, device=logits.device)
        _ids_checks("completion_ids", completion_ids, None, vocab, checks)
    else:
        _require_tensor("mask", mask, 2, (batch, seq_len), logits.device)
        valid = _normalise_mask(mask, checks)
        _ids_checks("completion_ids", completion_ids, valid, vocab, checks)
    resolved = _resolve_backend(backend, logits.device)
    _check_values(checks)
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    logp, ent = token_logprobs_forward(
        logits.detach(),
        completion_ids.to(torch.int64).contiguous(),
        valid.contiguous(),
        float(temperature),
        backend=resolved,
    )
    return (logp, ent) if entropy else logp
