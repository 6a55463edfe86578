"""`aesr1.loss.rapo_loss` (Triton kernel and PyTorch path) against the float64 reference of Eq. 10-12.

The cpu-triton cases run the real kernels in Triton's interpreter (TRITON_INTERPRET=1, set by
.ci/run); the cuda cases run where a GPU is present. Shapes are small because the interpreter is slow.
"""

from __future__ import annotations

import dataclasses
import inspect
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_loss_reference import (
    DEVICE_BACKENDS,
    DEVICES,
    assert_grad_close,
    assert_loss_close,
    assert_metrics_close,
    make_batch,
    reference_rapo,
    require_backend,
)

from aesr1.loss import METRIC_NAMES, RapoLossConfig, rapo_loss, rapo_loss_from_hidden, token_logprobs
from aesr1.triton_kernels import rapo_loss as kernels
from aesr1.triton_kernels.rapo_loss import RapoHyperparams, rapo_token_forward


def run_case(batch, device, backend, *, dtype, inplace=False, grad_scale=1.0, **kwargs):
    logits = batch["logits"].clone().requires_grad_()
    loss, metrics = rapo_loss(
        logits,
        batch["ids"],
        batch["old"],
        batch["ref"],
        batch["adv"],
        batch["mask"],
        backend=backend,
        inplace=inplace,
        **kwargs,
    )
    (loss * grad_scale).backward()
    ref_logits = batch["logits"].detach().cpu().double().requires_grad_()
    cpu = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    ref_loss, ref_metrics = reference_rapo(
        ref_logits, cpu["ids"], cpu["old"], cpu["ref"], cpu["adv"], cpu["mask"], **kwargs
    )
    (ref_loss * grad_scale).backward()
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert_loss_close(loss, ref_loss)
    assert_metrics_close(metrics, ref_metrics, ref_loss.max_abs_logp)
    assert logits.grad.dtype == dtype
    bound = ref_loss.token_logp.grad.abs().max().item() / kwargs.get("temperature", 1.0)
    assert_grad_close(
        logits.grad, ref_logits.grad, low_precision=dtype != torch.float32, dloss_dlogits_bound=bound
    )
    return logits, loss, metrics


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("vocab", [37, 1000, 1031])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(device, backend, vocab, dtype):
    require_backend(device, backend)
    batch = make_batch(3, 5, vocab, dtype=dtype, device=device, seed=vocab, temperature=0.7)
    run_case(batch, device, backend, dtype=dtype, temperature=0.7)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize(
    "aggregation,beta,kl_clamp,with_ref",
    [
        ("seq-mean-token-mean", 0.0, False, False),
        ("token-mean", 0.04, False, True),
        ("token-mean", 0.0, False, True),
        ("seq-mean-token-sum-norm", 0.01, True, True),
        ("seq-mean-token-mean", 0.5, True, True),
    ],
)
def test_aggregations_beta_and_kl_clamp(device, backend, aggregation, beta, kl_clamp, with_ref):
    require_backend(device, backend)
    # KL log-ratios of -12 and 3.5 exceed verl's value clamp (10): those tokens lose their KL gradient.
    batch = make_batch(3, 6, 53, device=device, seed=11, zero_row=True, kl_deltas=(-12.0, -0.4, 0.3, 3.5))
    if not with_ref:
        batch["ref"] = None
    _, _, metrics = run_case(
        batch,
        device,
        backend,
        dtype=torch.float32,
        aggregation=aggregation,
        beta=beta,
        kl_clamp=kl_clamp,
        max_completion_length=9 if aggregation == "seq-mean-token-sum-norm" else None,
    )
    assert math.isnan(metrics["kl"].item()) == (not with_ref)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize(
    "case",
    ["all-negative", "peaked", "fp16", "temperature-2.5", "eps-asymmetric"],
)
def test_numerical_edge_cases(device, backend, case):
    require_backend(device, backend)
    dtype = torch.float16 if case == "fp16" else torch.float32
    temperature = 2.5 if case == "temperature-2.5" else 1.0
    batch = make_batch(
        2,
        7,
        1031,
        dtype=dtype,
        device=device,
        seed=5,
        temperature=temperature,
        logit_shift=-1000.0 if case == "all-negative" else 0.0,
        logit_scale=1.0 if case == "fp16" else 3.0,
        peaked=case == "peaked",
    )
    kwargs = {"temperature": temperature}
    if case == "eps-asymmetric":
        kwargs.update(eps_low=0.05, eps_high=0.6)
    _, _, metrics = run_case(batch, device, backend, dtype=dtype, **kwargs)
    assert all(math.isfinite(metrics[name].item()) for name in METRIC_NAMES)
    if case == "peaked":
        assert metrics["entropy"].item() < 3.5  # half the tokens carry ~0 entropy


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_clip_fractions_and_both_advantage_signs_are_exercised(device, backend):
    require_backend(device, backend)
    batch = make_batch(4, 7, 64, device=device, seed=2)
    _, _, metrics = run_case(batch, device, backend, dtype=torch.float32)
    assert 0 < metrics["clip_frac_low"].item() < 1 and 0 < metrics["clip_frac_high"].item() < 1
    assert metrics["ratio_min"].item() < 0.8 < 1.28 < metrics["ratio_max"].item()


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inplace_gives_the_same_gradient_in_the_logits_buffer(device, backend, dtype):
    require_backend(device, backend)
    batch = make_batch(2, 4, 1031, dtype=dtype, device=device, seed=8)
    logits, _, _ = run_case(batch, device, backend, dtype=dtype, inplace=True, grad_scale=0.5)
    # The buffer now holds the gradient (already scaled by the backward).
    torch.testing.assert_close(logits.detach(), logits.grad, rtol=0, atol=0)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_strided_logits_slice_of_model_output(device, backend):
    require_backend(device, backend)
    batch = make_batch(2, 5, 40, device=device, seed=4)
    # The model scores T + 1 positions with a padded vocabulary; the loss takes a view, no copy.
    full = torch.randn(2, 6, 48, device=device)
    full[:, :5, :40] = batch["logits"]
    full.requires_grad_()
    view = full[:, :5, :40]
    assert not view.is_contiguous()
    loss, _ = rapo_loss(
        view, batch["ids"], batch["old"], batch["ref"], batch["adv"], batch["mask"], backend=backend
    )
    loss.backward()
    ref_logits = batch["logits"].cpu().double().requires_grad_()
    cpu = {k: v.cpu() for k, v in batch.items()}
    ref_loss, _ = reference_rapo(ref_logits, cpu["ids"], cpu["old"], cpu["ref"], cpu["adv"], cpu["mask"])
    ref_loss.backward()
    torch.testing.assert_close(loss.double().cpu(), ref_loss.detach(), rtol=1e-5, atol=1e-6)
    assert_grad_close(full.grad[:, :5, :40], ref_logits.grad, low_precision=False)
    assert full.grad[:, 5].abs().sum() == 0 and full.grad[..., 40:].abs().sum() == 0


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"])
def test_split_batch_with_global_normalisers_equals_whole_batch(device, backend, aggregation):
    """Gradient accumulation / data parallelism: two halves with global normalisers = one batch."""
    require_backend(device, backend)
    batch = make_batch(4, 6, 37, device=device, seed=21)
    kwargs = dict(aggregation=aggregation, max_completion_length=8, beta=0.02)

    def loss_and_grad(part, **extra):
        logits = batch["logits"][part].clone().requires_grad_()
        loss, _ = rapo_loss(
            logits,
            batch["ids"][part],
            batch["old"][part],
            batch["ref"][part],
            batch["adv"][part],
            batch["mask"][part],
            backend=backend,
            **kwargs,
            **extra,
        )
        loss.backward()
        return loss.detach(), logits.grad

    whole_loss, whole_grad = loss_and_grad(slice(0, 4))
    total_tokens = batch["mask"].sum()
    halves = [
        loss_and_grad(part, num_sequences=4, num_tokens=total_tokens)  # a tensor count, as all_reduce gives
        for part in (slice(0, 2), slice(2, 4))
    ]
    torch.testing.assert_close(halves[0][0] + halves[1][0], whole_loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.cat([halves[0][1], halves[1][1]]), whole_grad, rtol=1e-5, atol=1e-8)
    # Without the global normalisers the halves are normalised locally and differ.
    local = [loss_and_grad(part)[0] for part in (slice(0, 2), slice(2, 4))]
    assert not torch.allclose(local[0] + local[1], whole_loss, rtol=1e-3)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_all_padding_contributes_nothing(device, backend):
    require_backend(device, backend)
    batch = make_batch(3, 4, 37, device=device, seed=6, zero_row=True)
    logits = batch["logits"].clone().requires_grad_()
    loss, _ = rapo_loss(
        logits, batch["ids"], batch["old"], batch["ref"], batch["adv"], batch["mask"], backend=backend
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert logits.grad[2].abs().sum() == 0  # the all-padding sequence
    assert (logits.grad[~batch["mask"]] == 0).all()
    # A batch with no valid token: zero loss and gradient, NaN means (empty sets), no exception.
    empty = torch.zeros_like(batch["mask"])
    logits.grad = None
    loss, metrics = rapo_loss(
        logits, batch["ids"], batch["old"], batch["ref"], batch["adv"], empty, backend=backend
    )
    loss.backward()
    assert loss.item() == 0.0 and (logits.grad == 0).all()
    assert all(math.isnan(metrics[name].item()) for name in METRIC_NAMES)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_on_policy_ratio_is_exactly_one(device, backend):
    require_backend(device, backend)
    batch = make_batch(2, 5, 1031, dtype=torch.bfloat16, device=device, seed=9)
    old = token_logprobs(batch["logits"], batch["ids"].clamp(min=0), 0.9, backend=backend)
    logits = batch["logits"].clone().requires_grad_()
    loss, metrics = rapo_loss(
        logits, batch["ids"], old, batch["ref"], batch["adv"], batch["mask"], temperature=0.9, backend=backend
    )
    assert metrics["ratio_min"].item() == 1.0 and metrics["ratio_max"].item() == 1.0
    assert metrics["clip_frac_low"].item() == 0.0 and metrics["clip_frac_high"].item() == 0.0
    # old_logp=None means on-policy too, with the same loss.
    loss_none, _ = rapo_loss(
        batch["logits"],
        batch["ids"],
        None,
        batch["ref"],
        batch["adv"],
        batch["mask"],
        temperature=0.9,
        backend=backend,
    )
    assert loss_none.item() == loss.item()


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_no_grad_and_frozen_logits_leave_the_logits_alone(device, backend):
    require_backend(device, backend)
    batch = make_batch(2, 3, 37, device=device, seed=1)
    before = batch["logits"].clone()
    loss, _ = rapo_loss(
        batch["logits"],
        batch["ids"],
        batch["old"],
        batch["ref"],
        batch["adv"],
        batch["mask"],
        inplace=True,
        backend=backend,
    )
    assert not loss.requires_grad
    assert torch.equal(batch["logits"], before)
    with torch.no_grad():
        logits = batch["logits"].clone().requires_grad_()
        rapo_loss(
            logits,
            batch["ids"],
            batch["old"],
            batch["ref"],
            batch["adv"],
            batch["mask"],
            inplace=True,
            backend=backend,
        )
    assert torch.equal(logits.detach(), before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])  # fp16: made by the backward
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_second_backward_is_refused(device, backend, dtype):
    require_backend(device, backend)
    batch = make_batch(2, 3, 37, device=device, seed=1, dtype=dtype)
    args = (batch["ids"], batch["old"], batch["ref"], batch["adv"], batch["mask"])
    logits = batch["logits"].clone().requires_grad_()
    loss, _ = rapo_loss(logits, *args, backend=backend)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="rapo_loss computes its gradients in the forward; .* only once"):
        loss.backward()
    hidden = torch.randn(2, 3, 8, device=device).to(dtype).requires_grad_()
    weight = torch.randn(37, 8, device=device).to(dtype).requires_grad_()
    loss, _ = rapo_loss_from_hidden(hidden, weight, *args, backend=backend)
    loss.backward(retain_graph=True)
    assert hidden.grad is not None and weight.grad is not None
    with pytest.raises(RuntimeError, match="rapo_loss_from_hidden computes its gradients .* only once"):
        loss.backward()


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_flows_into_a_model_on_the_default_backend(device):
    """Training code calls rapo_loss with a model's logits; `auto` must give autograd's gradients."""
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 37).to(device)
    hidden = torch.randn(2, 4, 8, device=device)
    batch = make_batch(2, 4, 37, device=device, seed=13)
    loss, _ = rapo_loss(head(hidden), batch["ids"], batch["old"], batch["ref"], batch["adv"], batch["mask"])
    loss.backward()
    fused = head.weight.grad.clone()
    head.weight.grad = None
    ref_loss, _ = reference_rapo(
        head(hidden), batch["ids"], batch["old"], batch["ref"], batch["adv"], batch["mask"]
    )
    ref_loss.backward()
    assert_grad_close(fused, head.weight.grad, low_precision=False)


def test_config_dataclass_feeds_the_keywords():
    batch = make_batch(2, 3, 37, seed=1)
    config = RapoLossConfig(beta=0.0, aggregation="token-mean", eps_high=0.2)
    loss, _ = rapo_loss(
        batch["logits"], batch["ids"], batch["old"], None, batch["adv"], batch["mask"], **config.as_kwargs()
    )
    ref_loss, _ = reference_rapo(
        batch["logits"],
        batch["ids"],
        batch["old"],
        None,
        batch["adv"],
        batch["mask"],
        beta=0.0,
        aggregation="token-mean",
        eps_high=0.2,
    )
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-7)


def test_every_loss_default_comes_from_the_config():
    """`RapoLossConfig` is the one place of the defaults: the functions and the kernels' scalars agree."""
    defaults = RapoLossConfig()
    for function in (rapo_loss, rapo_loss_from_hidden):
        parameters = inspect.signature(function).parameters
        for field in dataclasses.fields(RapoLossConfig):
            assert parameters[field.name].default == getattr(defaults, field.name), (function, field.name)
    scalars = RapoHyperparams()
    for field in dataclasses.fields(RapoHyperparams):
        assert getattr(scalars, field.name) == getattr(defaults, field.name), field.name


# ------------------------------------------------------------------------------------------------
# The kernel itself: many vocabulary blocks with a ragged tail, -inf logits, Triton = PyTorch path.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("block_v", [16, 64])
def test_kernel_blocks_tail_and_minus_inf_logits(device, block_v):
    require_backend(device, "triton")
    batch = make_batch(2, 4, 75, device=device, seed=17)
    logits = batch["logits"].clone()
    logits[..., 70:] = float("-inf")  # a masked-out vocabulary range, incl. a whole -inf block at 16
    logits[0, 0, :16] = float("-inf")  # a first block with no finite logit: running max stays -inf
    ids = batch["ids"].clamp(0, 69)
    ids[0, 0] = 20
    valid = batch["mask"]
    hp = RapoHyperparams(temperature=0.8, beta=0.05)
    weight = valid.float() / valid.sum()
    args = (ids, valid, batch["old"], batch["ref"], batch["adv"], weight, hp)
    out = {}
    for backend in ("torch", "triton"):
        grad = torch.empty_like(logits)
        logp, entropy = rapo_token_forward(
            logits,
            *args,
            backend=backend,
            write_grad=True,
            grad=grad,
            block_v=block_v if backend == "triton" else None,
        )
        out[backend] = (logp, entropy, grad)
    for torch_out, triton_out in zip(out["torch"], out["triton"], strict=True):
        assert torch.isfinite(triton_out).all()
        torch.testing.assert_close(triton_out, torch_out, rtol=1e-5, atol=1e-6)
    exact = torch.log_softmax(logits.double().cpu() / 0.8, -1).gather(-1, ids.cpu().unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(
        out["triton"][0].cpu().double(), torch.where(valid.cpu(), exact, 0.0), rtol=1e-6, atol=1e-5
    )
    assert (out["triton"][2][..., 70:] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_scale_of_the_backward_is_applied(device):
    require_backend(device, "triton")
    batch = make_batch(2, 3, 37, device=device, seed=3)
    for backend in ("torch", "triton"):
        run_case(batch, device, backend, dtype=torch.float32, grad_scale=-3.0)
    grad = torch.ones(2, 3, 5, device=device)
    kernels.scale_grad_(grad, torch.tensor(1.0, device=device), "triton")
    assert (grad == 1).all()
    kernels.scale_grad_(grad, torch.tensor(0.25, device=device), "triton")
    assert (grad == 0.25).all()


# ------------------------------------------------------------------------------------------------
# Property test: random shapes and hyperparameters, PyTorch path (fast) and Triton (few examples).
# ------------------------------------------------------------------------------------------------


@st.composite
def loss_cases(draw):
    return dict(
        shape=(draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(2, 70))),
        seed=draw(st.integers(0, 10_000)),
        temperature=draw(st.sampled_from([0.5, 1.0, 1.3])),
        beta=draw(st.sampled_from([0.0, 0.01, 0.3])),
        aggregation=draw(st.sampled_from(["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"])),
        kl_clamp=draw(st.booleans()),
        eps=draw(st.sampled_from([(0.2, 0.28), (0.1, 0.1), (0.3, 0.5)])),
        scale=draw(st.sampled_from([0.1, 3.0, 10.0])),
    )


def _property(case, backend):
    batch_size, seq_len, vocab = case["shape"]
    eps_low, eps_high = case["eps"]
    batch = make_batch(
        batch_size,
        seq_len,
        vocab,
        seed=case["seed"],
        temperature=case["temperature"],
        logit_scale=case["scale"],
    )
    # The chosen ratios avoid the default bounds only; skip draws whose ratios sit on other bounds.
    exact = torch.log_softmax(batch["logits"].double() / case["temperature"], -1)
    ratio = (
        exact.gather(-1, batch["ids"].clamp(min=0).unsqueeze(-1)).squeeze(-1) - batch["old"].double()
    ).exp()
    for bound in (1 - eps_low, 1 + eps_high):
        if ((ratio - bound).abs() < 1e-3)[batch["mask"]].any():
            return
    run_case(
        batch,
        "cpu",
        backend,
        dtype=torch.float32,
        temperature=case["temperature"],
        beta=case["beta"],
        aggregation=case["aggregation"],
        kl_clamp=case["kl_clamp"],
        eps_low=eps_low,
        eps_high=eps_high,
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(loss_cases())
def test_property_torch_path_matches_reference(case):
    _property(case, "torch")


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(loss_cases())
def test_property_triton_kernel_matches_reference(case):
    require_backend("cpu", "triton")
    _property(case, "triton")


# ------------------------------------------------------------------------------------------------
# Bad input: ValueError naming the argument, raised before any kernel runs.
# ------------------------------------------------------------------------------------------------


def _bad_input_cases():
    batch = make_batch(2, 3, 11, seed=0, garbage_padding=False)
    ids, old, ref, adv, mask = batch["ids"], batch["old"], batch["ref"], batch["adv"], batch["mask"]
    logits = batch["logits"]
    meta = torch.device("meta")
    out_of_vocab = ids.clone()
    out_of_vocab[0, 0] = 11
    negative = ids.clone()
    negative[0, 0] = -1
    return [
        ("logits", dict(logits=logits[0])),
        ("logits", dict(logits=logits.double())),
        (
            "logits",
            dict(logits=logits[:0], ids=ids[:0], old=old[:0], ref=ref[:0], adv=adv[:0], mask=mask[:0]),
        ),
        ("completion_ids", dict(ids=ids[:, :2])),
        ("completion_ids", dict(ids=ids.float())),
        ("completion_ids", dict(ids=out_of_vocab)),
        ("completion_ids", dict(ids=negative)),
        ("completion_ids", dict(ids=ids.to(meta))),
        ("old_logp", dict(old=old[:, :2])),
        ("old_logp", dict(old=old.long())),
        ("old_logp", dict(old=torch.where(mask, torch.nan, old))),
        ("ref_logp", dict(ref=None)),
        ("ref_logp", dict(ref=ref.to(meta))),
        ("advantages", dict(adv=adv[:1])),
        ("advantages", dict(adv=adv.unsqueeze(-1))),
        ("advantages", dict(adv=torch.tensor([1.0, float("inf")]))),
        ("mask", dict(mask=mask.float() * 2)),
        ("mask", dict(mask=mask[:1])),
        ("temperature", dict(temperature=0.0)),
        ("eps_low", dict(eps_low=1.0)),
        ("eps_high", dict(eps_high=-0.1)),
        ("beta", dict(beta=-1.0)),
        ("aggregation", dict(aggregation="sum")),
        ("num_sequences", dict(num_sequences=0)),
        ("num_tokens", dict(num_tokens=torch.tensor(0.0), aggregation="token-mean")),
        ("max_completion_length", dict(max_completion_length=-3)),
        ("backend", dict(backend="cuda-graphs")),
    ]


@pytest.mark.parametrize("name,change", _bad_input_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_bad_input_names_the_argument_before_any_kernel(monkeypatch, name, change):
    batch = make_batch(2, 3, 11, seed=0, garbage_padding=False)
    args = dict(
        logits=batch["logits"],
        ids=batch["ids"],
        old=batch["old"],
        ref=batch["ref"],
        adv=batch["adv"],
        mask=batch["mask"],
    )
    kwargs = {k: change.pop(k) for k in list(change) if k not in args}
    args.update(change)

    def launched(*_a, **_k):
        raise AssertionError("a kernel ran before the input was validated")

    monkeypatch.setattr(kernels, "rapo_token_forward", launched)
    with pytest.raises(ValueError, match=name):
        rapo_loss(args["logits"], args["ids"], args["old"], args["ref"], args["adv"], args["mask"], **kwargs)


def test_padding_may_hold_any_id_and_non_finite_log_probs():
    batch = make_batch(2, 4, 11, seed=0, garbage_padding=True)
    assert (batch["ids"] == -100).any()
    loss, _ = rapo_loss(
        batch["logits"], batch["ids"], batch["old"], batch["ref"], batch["adv"], batch["mask"]
    )
    assert torch.isfinite(loss)


def test_non_tensor_input_is_a_type_error():
    batch = make_batch(2, 3, 11, seed=0)
    with pytest.raises(TypeError, match="completion_ids"):
        rapo_loss(
            batch["logits"], batch["ids"].tolist(), batch["old"], batch["ref"], batch["adv"], batch["mask"]
        )


def test_traceable_by_torch_compile():
    """The autograd.Function (PyTorch path here) compiles and gives the eager loss and gradient."""
    batch = make_batch(2, 4, 37, seed=0)
    args = (batch["ids"], batch["old"], batch["ref"], batch["adv"], batch["mask"])

    def loss_of(logits):
        loss, metrics = rapo_loss(logits, *args)
        return loss, metrics["entropy"]

    compiled = torch.compile(loss_of, backend="aot_eager")
    logits_c = batch["logits"].clone().requires_grad_()
    loss_c, entropy_c = compiled(logits_c)
    loss_c.backward()
    logits_e = batch["logits"].clone().requires_grad_()
    loss_e, entropy_e = loss_of(logits_e)
    loss_e.backward()
    torch.testing.assert_close(loss_c, loss_e)
    torch.testing.assert_close(entropy_c, entropy_e)
    torch.testing.assert_close(logits_c.grad, logits_e.grad)
