"""The precision contract of the RAPO loss (`aesr1.loss`): which dtype each GEMM and gradient is
computed and rounded in, for fp32, bf16, fp32 under bf16 autocast, and fp16 with a loss scaler."""

from __future__ import annotations

import pytest
import torch
from test_loss_reference import DEVICE_BACKENDS, make_batch, reference_rapo, require_backend

from aesr1.loss import rapo_loss, rapo_loss_from_hidden
from aesr1.triton_kernels.rapo_loss import scale_grad_

# torch.cuda.amp.GradScaler's initial scale: above fp16's largest finite value (65504).
GRAD_SCALER_INIT = 65536.0


def linear_case(batch_size, seq_len, width, vocab, *, device, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch_size, seq_len, width, generator=g)
    weight = torch.randn(vocab, width, generator=g) * 2 / width**0.5
    logits = (hidden.double() @ weight.double().t()).to(dtype)
    batch = make_batch(batch_size, seq_len, vocab, device=device, seed=seed, logits=logits)
    args = (batch["ids"], batch["old"], batch["ref"], batch["adv"], batch["mask"])
    return hidden.to(device=device, dtype=dtype), weight.to(device=device, dtype=dtype), args


def fused(hidden, weight, args, backend, **kwargs):
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    loss, metrics = rapo_loss_from_hidden(h, w, *args, backend=backend, beta=0.02, **kwargs)
    return h, w, loss, metrics


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_fp32_inputs_under_bf16_autocast_run_bf16_gemms_with_fp32_gradients(device, backend):
    """What the trainer does for an fp32 model under accelerate's mixed_precision=bf16."""
    require_backend(device, backend)
    hidden, weight, args = linear_case(4, 6, 16, 257, device=device, seed=3)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        h, w, loss, _ = fused(hidden, weight, args, backend, chunk_size=1)
    loss.backward()
    assert h.grad.dtype == torch.float32 and w.grad.dtype == torch.float32

    # The same computation spelled out: bf16 operands, fp32 accumulation of dW, no autocast.
    hb, wb, loss_b, _ = fused(hidden.bfloat16(), weight.bfloat16(), args, backend, chunk_size=1,
                              weight_grad_dtype=torch.float32)  # fmt: skip
    loss_b.backward()
    torch.testing.assert_close(loss, loss_b, rtol=0, atol=0)
    # dX: one bf16 GEMM per chunk, converted exactly to fp32
    torch.testing.assert_close(h.grad, hb.grad.float(), rtol=0, atol=0)
    # dW: the fp32 accumulator rounds to the bf16 result of the spelled-out call
    torch.testing.assert_close(w.grad.bfloat16(), wb.grad, rtol=0, atol=0)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_fp32_weight_gradient_sums_chunks_in_fp32(device, backend):
    """Each chunk's dW product enters the fp32 accumulator unrounded: the sum over 4 chunks equals
    the float64 sum of the same bf16 operands to fp32 accuracy (a bf16 rounding per chunk is ~1e-3)."""
    require_backend(device, backend)
    hidden, weight, args = linear_case(4, 8, 32, 300, device=device, seed=8)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        _, w, loss, _ = fused(hidden, weight, args, backend, chunk_size=1)
    loss.backward()

    # The gradient the kernel writes for the same bf16 logits, from the logits path.
    rows = hidden.bfloat16().reshape(-1, hidden.shape[-1])
    logits = torch.mm(rows, weight.bfloat16().t()).view(4, 8, -1).requires_grad_()
    loss_l, _ = rapo_loss(logits, *args, backend=backend, beta=0.02)
    loss_l.backward()
    expected = logits.grad.reshape(rows.shape[0], -1).double().t() @ rows.double()
    error = (w.grad.double() - expected).abs().max() / expected.abs().max()
    assert error < 1e-5, f"relative error {error:.2e} of the fp32-accumulated dW"


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("path", ["logits", "hidden"])
@pytest.mark.parametrize("loss_scale", [GRAD_SCALER_INIT, GRAD_SCALER_INIT / 2])
def test_fp16_with_a_loss_scaler_keeps_every_gradient(device, backend, path, loss_scale):
    """fp16 with GradScaler's initial scale (and half of it, which fp16 holds): finite gradients,
    equal to the scaled float64 gradient, and no entry that the scaled gradient can represent
    flushed to zero (as it is when the unscaled gradient is stored in fp16 first)."""
    require_backend(device, backend)
    if device == "cpu" and path == "hidden":
        try:
            torch.mm(torch.ones(2, 2, dtype=torch.float16), torch.ones(2, 2, dtype=torch.float16))
        except RuntimeError:
            pytest.skip("this torch build has no fp16 CPU matmul")
    batch_size, seq_len, vocab = 4, 64, 4096
    if path == "logits":
        batch = make_batch(batch_size, seq_len, vocab, dtype=torch.float16, device=device, seed=5)
        logits = batch["logits"].clone().requires_grad_()
        args = (batch["ids"], batch["old"], batch["ref"], batch["adv"], batch["mask"])
        loss, _ = rapo_loss(logits, *args, backend=backend)
        (loss * loss_scale).backward()
        grad = logits.grad
        ref_logits = batch["logits"].detach().cpu().double().requires_grad_()
    else:
        hidden, weight, args = linear_case(batch_size, seq_len, 32, vocab, device=device, seed=5,
                                           dtype=torch.float16)  # fmt: skip
        h = hidden.clone().requires_grad_()
        loss, _ = rapo_loss_from_hidden(h, weight, *args, backend=backend)
        (loss * loss_scale).backward()
        grad = h.grad
        h_ref = hidden.detach().cpu().double().requires_grad_()
        logits_exact = h_ref @ weight.detach().cpu().double().t()
        # the kernel sees fp16-rounded logits
        ref_logits = logits_exact + (logits_exact.half().double() - logits_exact).detach()
    cpu = [None if a is None else a.cpu() for a in args]
    ref_loss, _ = reference_rapo(ref_logits, *cpu)
    (ref_loss * loss_scale).backward()
    expected = (ref_logits.grad if path == "logits" else h_ref.grad).double()

    assert grad.dtype == torch.float16
    actual = grad.detach().cpu().double()
    assert torch.isfinite(actual).all(), "a scaled fp16 gradient overflowed"
    representable = expected.abs() > 2.0**-23  # twice fp16's smallest subnormal
    flushed = (actual == 0) & representable
    assert int(flushed.sum()) == 0, f"{int(flushed.sum())} of {int(representable.sum())} entries flushed to 0"
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=2e-2, atol=2e-3 * scale)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_gradient_scaling_is_done_in_fp32(dtype, backend):
    """A factor that bf16 cannot hold exactly (1/3) must not bias every gradient by its rounding."""
    g = torch.Generator().manual_seed(0)
    grad = (torch.randn(3, 5, 7, generator=g) * 0.01).to(dtype)
    factor = torch.tensor(1.0 / 3.0)
    expected = (grad.float() * factor).to(dtype)
    scale_grad_(grad, factor, backend)
    torch.testing.assert_close(grad, expected, rtol=0, atol=0)
    # non-contiguous gradients too
    base = (torch.randn(4, 6, generator=g) * 0.01).to(dtype)
    view = base.t()
    expected = (view.float() * factor).to(dtype)
    scale_grad_(view, factor, backend)
    torch.testing.assert_close(view, expected, rtol=0, atol=0)


def test_fp32_without_autocast_stays_fp32():
    hidden, weight, args = linear_case(2, 5, 8, 61, device="cpu", seed=1)
    h, w, loss, _ = fused(hidden, weight, args, "torch", chunk_size=1)
    loss.backward()
    h_ref = hidden.double().requires_grad_()
    w_ref = weight.double().requires_grad_()
    ref_loss, _ = reference_rapo(h_ref @ w_ref.t(), *args, beta=0.02)
    ref_loss.backward()
    for actual, expected in ((h.grad, h_ref.grad), (w.grad, w_ref.grad)):
        assert actual.dtype == torch.float32
        error = (actual.double() - expected).abs().max() / expected.abs().max()
        assert error < 1e-5
