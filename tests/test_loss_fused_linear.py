"""`aesr1.loss.rapo_loss_from_hidden`: the chunked lm_head + RAPO loss against autograd through
hidden @ W^T and the float64 reference (loss, metrics, d hidden, d weight)."""

from __future__ import annotations

import pytest
import torch
from test_loss_reference import (
    DEVICE_BACKENDS,
    assert_grad_close,
    assert_loss_close,
    assert_metrics_close,
    make_batch,
    reference_rapo,
    require_backend,
)

from aesr1.loss import rapo_loss, rapo_loss_from_hidden


def make_linear_case(batch_size, seq_len, width, vocab, *, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch_size, seq_len, width, generator=g).to(dtype)
    weight = (torch.randn(vocab, width, generator=g) * 2 / width**0.5).to(dtype)
    # old/ref are built around the logits the GEMM hands the kernel, so ratios avoid the clip bounds.
    logits = (hidden.double() @ weight.double().t()).to(dtype)
    batch = make_batch(batch_size, seq_len, vocab, device=device, seed=seed, logits=logits)
    return hidden.to(device), weight.to(device), batch


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_size", [1, 2, None])
def test_matches_autograd_through_the_lm_head(device, backend, dtype, chunk_size):
    require_backend(device, backend)
    hidden, weight, batch = make_linear_case(3, 4, 16, 1031, dtype=dtype, device=device, seed=31)
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    kwargs = dict(temperature=0.9, beta=0.02)
    loss, metrics = rapo_loss_from_hidden(
        h,
        w,
        batch["ids"],
        batch["old"],
        batch["ref"],
        batch["adv"],
        batch["mask"],
        chunk_size=chunk_size,
        backend=backend,
        **kwargs,
    )
    (2.0 * loss).backward()

    h_ref = hidden.detach().cpu().double().requires_grad_()
    w_ref = weight.detach().cpu().double().requires_grad_()
    # The kernel sees logits rounded to the GEMM's dtype; the reference sees exact products. For
    # bf16 that rounding dominates, so compare bf16 against a reference on the rounded logits.
    logits_ref = h_ref @ w_ref.t()
    if dtype != torch.float32:
        logits_ref = logits_ref + (logits_ref.to(dtype).double() - logits_ref).detach()
    cpu = {k: v.cpu() for k, v in batch.items()}
    ref_loss, ref_metrics = reference_rapo(
        logits_ref, cpu["ids"], cpu["old"], cpu["ref"], cpu["adv"], cpu["mask"], **kwargs
    )
    (2.0 * ref_loss).backward()

    low = dtype != torch.float32
    assert_loss_close(loss, ref_loss, rtol=1e-4 if low else 1e-6)
    if not low:
        assert_metrics_close(metrics, ref_metrics)
    assert h.grad.dtype == dtype and w.grad.dtype == dtype
    assert h.grad.shape == h.shape and w.grad.shape == w.shape
    assert_grad_close(h.grad, h_ref.grad, low_precision=low)
    assert_grad_close(w.grad, w_ref.grad, low_precision=low)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_agrees_with_the_logits_path(device, backend):
    """Same numbers as materialising logits = hidden @ W^T and calling rapo_loss (fp32)."""
    require_backend(device, backend)
    hidden, weight, batch = make_linear_case(2, 5, 8, 37, dtype=torch.float32, device=device, seed=4)
    args = (batch["ids"], batch["old"], batch["ref"], batch["adv"], batch["mask"])
    kwargs = dict(aggregation="token-mean", kl_clamp=True, backend=backend)
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss1, metrics1 = rapo_loss_from_hidden(h1, w1, *args, chunk_size=1, **kwargs)
    loss1.backward()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss2, metrics2 = rapo_loss(h2 @ w2.t(), *args, **kwargs)
    loss2.backward()
    torch.testing.assert_close(loss1, loss2, rtol=1e-5, atol=1e-7)
    for name in metrics1:
        torch.testing.assert_close(metrics1[name], metrics2[name], rtol=1e-5, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_frozen_weight_and_fp32_weight_grad_accumulation(device, backend):
    require_backend(device, backend)
    hidden, weight, batch = make_linear_case(3, 3, 8, 64, dtype=torch.bfloat16, device=device, seed=12)
    args = (batch["ids"], batch["old"], batch["ref"], batch["adv"], batch["mask"])
    # Frozen lm_head (e.g. LoRA): only d hidden, the dW GEMM is skipped.
    h = hidden.clone().requires_grad_()
    loss, _ = rapo_loss_from_hidden(h, weight, *args, chunk_size=1, backend=backend)
    loss.backward()
    assert h.grad is not None and torch.isfinite(h.grad.float()).all()
    # fp32 accumulation of dW across chunks equals one-chunk accumulation up to the final rounding.
    grads = []
    for chunk_size, acc in ((1, torch.float32), (3, None)):
        w = weight.clone().requires_grad_()
        loss, _ = rapo_loss_from_hidden(
            hidden, w, *args, chunk_size=chunk_size, weight_grad_dtype=acc, backend=backend
        )
        loss.backward()
        grads.append(w.grad.float())
    scale = grads[1].abs().max()
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-2, atol=1e-2 * scale.item())


@pytest.mark.parametrize(
    "name,change",
    [
        ("hidden", dict(hidden=torch.zeros(2, 3))),
        ("hidden", dict(hidden=torch.zeros(2, 3, 8, dtype=torch.float64))),
        ("lm_head_weight", dict(weight=torch.zeros(37, 7))),
        ("lm_head_weight", dict(weight=torch.zeros(37, 8, dtype=torch.bfloat16))),
        ("lm_head_weight", dict(weight=torch.zeros(37, 8, device="meta"))),
        ("chunk_size", dict(chunk_size=0)),
        ("weight_grad_dtype", dict(weight_grad_dtype=torch.float16)),
        ("completion_ids", dict(ids=torch.full((2, 3), 37))),
    ],
)
def test_bad_input_names_the_argument(name, change):
    _, _, batch = make_linear_case(2, 3, 8, 37, dtype=torch.float32, device="cpu", seed=0)
    hidden = change.pop("hidden", torch.zeros(2, 3, 8))
    weight = change.pop("weight", torch.zeros(37, 8))
    ids = change.pop("ids", batch["ids"].clamp(min=0))
    with pytest.raises(ValueError, match=name):
        rapo_loss_from_hidden(
            hidden, weight, ids, batch["old"], batch["ref"], batch["adv"], batch["mask"], **change
        )
