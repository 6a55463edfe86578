"""float64 reference of the RAPO loss (paper Eq. 10-12), test-batch builders, and checks of the
reference itself. Written independently of `aesr1.triton_kernels` (TRL-style formulation through
autograd) so that the fused implementations are compared against the equations, not themselves.
"""

from __future__ import annotations

import math

import pytest
import torch

CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])
# (device, backend) pairs; the CPU Triton variant runs the kernels in Triton's interpreter.
DEVICE_BACKENDS = [
    pytest.param("cpu", "torch", id="cpu-torch"),
    pytest.param("cpu", "triton", id="cpu-triton"),
    pytest.param(
        "cuda", "torch", id="cuda-torch", marks=pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
    ),
    pytest.param(
        "cuda", "triton", id="cuda-triton", marks=pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
    ),
]
# Ratios used to build old_logp: at least 2% away from the clip bounds 0.8 and 1.28, so fp32 and
# fp64 agree on which branch of the clipped surrogate is active; both sides of both bounds appear.
RATIOS = (0.5, 0.7, 0.9, 1.0, 1.1, 1.2, 1.4, 1.7)


def require_backend(device: str, backend: str) -> None:
    """Skip a Triton-on-CPU case only in a process started without TRITON_INTERPRET=1 (CI sets it)."""
    if backend == "triton":
        from aesr1.triton_kernels.rapo_loss import triton_runs_on

        if not triton_runs_on(torch.device(device)):
            pytest.skip("Triton kernels on CPU need TRITON_INTERPRET=1 (set by .ci/run)")


def reference_rapo(
    logits,
    ids,
    old_logp,
    ref_logp,
    advantages,
    mask,
    *,
    eps_low=0.2,
    eps_high=0.28,
    beta=0.01,
    temperature=1.0,
    aggregation="seq-mean-token-mean",
    kl_clamp=False,
    num_sequences=None,
    num_tokens=None,
    max_completion_length=None,
):
    """(loss, metrics) in float64; differentiable w.r.t. `logits` (any float tensor, cast to f64)."""
    valid = mask != 0
    x = logits.double() / temperature
    log_probs = torch.log_softmax(x, dim=-1)
    safe_ids = torch.where(valid, ids.long(), torch.zeros_like(ids.long()))
    logp = log_probs.gather(-1, safe_ids.unsqueeze(-1)).squeeze(-1)
    if logp.requires_grad:
        logp.retain_grad()
    zero = torch.zeros_like(logp)
    # Padding may hold NaN/inf: sanitise before the formulas so where() does not leak NaN gradients.
    old = logp.detach() if old_logp is None else torch.where(valid, old_logp.double(), zero)
    ratio = torch.exp(logp - old)
    adv = advantages.double().unsqueeze(-1)
    surrogate = torch.min(ratio * adv, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv)
    per_token = -surrogate
    kl = None
    if ref_logp is not None:
        log_ratio = torch.where(valid, ref_logp.double(), zero) - logp
        if kl_clamp:
            log_ratio = torch.clamp(log_ratio, -20.0, 20.0)
        kl = torch.exp(log_ratio) - log_ratio - 1
        if kl_clamp:
            kl = torch.clamp(kl, -10.0, 10.0)
    if beta != 0:
        per_token = per_token + beta * kl
    per_token = torch.where(valid, per_token, zero)
    maskf = valid.double()
    batch, seq_len = mask.shape
    n_seq = batch if num_sequences is None else float(num_sequences)

    def aggregate(values):
        if aggregation == "seq-mean-token-mean":
            return (values.sum(-1) / maskf.sum(-1).clamp(min=1)).sum() / n_seq
        if aggregation == "token-mean":
            n_tok = maskf.sum().clamp(min=1) if num_tokens is None else float(num_tokens)
            return values.sum() / n_tok
        if aggregation == "seq-mean-token-sum-norm":
            length = seq_len if max_completion_length is None else max_completion_length
            return values.sum() / (n_seq * length)
        raise AssertionError(aggregation)

    loss = aggregate(per_token)

    with torch.no_grad():
        probs = log_probs.exp()
        entropy = -torch.where(probs > 0, probs * log_probs, torch.zeros_like(probs)).sum(-1)
        count = maskf.sum()

        def mean(v):
            return torch.where(valid, v.double(), zero).sum() / count

        r = ratio.detach()
        metrics = {
            "kl": mean(kl.detach()) if kl is not None else torch.tensor(float("nan"), dtype=torch.float64),
            "clip_frac_low": mean(((r < 1 - eps_low) & (adv < 0)).double()),
            "clip_frac_high": mean(((r > 1 + eps_high) & (adv > 0)).double()),
            "entropy": mean(entropy),
            "ratio_mean": mean(r),
            "ratio_min": r[valid].min() if count > 0 else torch.tensor(float("nan")),
            "ratio_max": r[valid].max() if count > 0 else torch.tensor(float("nan")),
        }
    # For tolerances: d loss / d logp (token_logp.grad after backward), the loss of |per-token terms|
    # (fp32 errors do not cancel when the terms do) and the largest |logp| (fp32 ulps of it reach r).
    loss.token_logp = logp
    loss.magnitude = aggregate(per_token.detach().abs()).item()
    loss.max_abs_logp = max(1.0, logp.detach()[valid].abs().max().item()) if valid.any() else 1.0
    return loss, metrics


def make_batch(
    batch,
    seq_len,
    vocab,
    *,
    dtype=torch.float32,
    device="cpu",
    seed=0,
    temperature=1.0,
    logit_scale=3.0,
    logit_shift=0.0,
    peaked=False,
    zero_row=False,
    garbage_padding=True,
    kl_deltas=(-0.8, -0.3, 0.2, 0.6),
    logits=None,
):
    """A random RAPO batch: padded masks, ratios on both sides of both clip bounds, both advantage
    signs. old/ref log-probs are built from the exact log-probs so their ratios are what we chose.
    `logits` (CPU) replaces the random ones, e.g. the product of a hidden state and a weight."""
    g = torch.Generator().manual_seed(seed)
    if logits is None:
        logits = torch.randn(batch, seq_len, vocab, generator=g) * logit_scale + logit_shift
    ids = torch.randint(0, vocab, (batch, seq_len), generator=g)
    if peaked:  # every other token: nearly all mass on one id (entropy ~ 0)
        hot = torch.randint(0, vocab, (batch, seq_len), generator=g)
        bump = torch.zeros_like(logits).scatter_(-1, hot.unsqueeze(-1), 40.0)
        rows = (torch.arange(seq_len) % 2 == 0).view(1, seq_len, 1)
        logits = logits + bump * rows
        ids = torch.where(
            rows.squeeze(-1), torch.where(torch.rand(batch, seq_len, generator=g) < 0.5, hot, ids), ids
        )
    logits = logits.to(dtype)
    lengths = torch.randint(1, seq_len + 1, (batch,), generator=g)
    lengths[0] = seq_len
    mask = torch.arange(seq_len).unsqueeze(0) < lengths.unsqueeze(1)
    if zero_row and batch > 1:
        mask[-1] = False
    exact = torch.log_softmax(logits.double() / temperature, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    pick = torch.randint(0, len(RATIOS), (batch, seq_len), generator=g)
    ratio = torch.tensor(RATIOS, dtype=torch.float64)[pick] * (
        1 + 0.02 * (torch.rand(batch, seq_len, generator=g) - 0.5)
    )
    old = (exact - ratio.log()).float()
    delta = torch.tensor(kl_deltas, dtype=torch.float64)[
        torch.randint(0, len(kl_deltas), (batch, seq_len), generator=g)
    ]
    ref = (exact + delta).float()
    signs = torch.tensor([1.0, -1.0]).repeat(batch)[:batch]
    advantages = signs * (0.25 + torch.rand(batch, generator=g))
    if garbage_padding:  # padding content must never matter
        ids = torch.where(mask, ids, torch.full_like(ids, -100))
        old = torch.where(mask, old, torch.full_like(old, float("nan")))
        ref = torch.where(mask, ref, torch.full_like(ref, float("inf")))
    to = lambda t: t.to(device)  # noqa: E731
    return dict(
        logits=to(logits),
        ids=to(ids),
        old=to(old),
        ref=to(ref),
        adv=to(advantages),
        mask=to(mask),
    )


def assert_grad_close(
    actual: torch.Tensor, expected: torch.Tensor, low_precision: bool, dloss_dlogits_bound: float = 0.0
) -> None:
    """Gradient agreement relative to its largest entry; bf16/fp16 outputs carry their rounding.

    An fp32 softmax gradient g * (onehot - p) / temperature has an absolute error of a few fp32 ulps
    of |g| / temperature whatever its size (1 - p cancels when p -> 1): `dloss_dlogits_bound` is
    max |g| / temperature, which the reference exposes as `loss.token_logp.grad`.
    """
    expected = expected.detach().double().cpu()
    actual = actual.detach().double().cpu()
    scale = max(expected.abs().max().item(), 1e-30)
    rtol, atol = (1.6e-2, 4e-3 * scale) if low_precision else (1e-4, 1e-6 * scale)
    atol += 5e-7 * dloss_dlogits_bound
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def assert_loss_close(actual: torch.Tensor, reference: torch.Tensor, rtol: float = 1e-6) -> None:
    """fp32 log-probs are exact to a few ulps of |logp|, which the ratios inherit; the per-token
    terms of the loss may cancel, so the tolerance scales with their absolute sum."""
    atol = (rtol + 1e-6 * reference.max_abs_logp) * reference.magnitude + 1e-7
    torch.testing.assert_close(actual.detach().double().cpu(), reference.detach(), rtol=0, atol=atol)


def assert_metrics_close(actual: dict, expected: dict, max_abs_logp: float = 1.0) -> None:
    assert set(actual) == set(expected)
    for name, value in expected.items():
        got = actual[name]
        assert got.dim() == 0 and not got.requires_grad, name
        if math.isnan(value.item()):
            assert math.isnan(got.item()), name
            continue
        rtol = 2e-5 + 1e-6 * max_abs_logp
        torch.testing.assert_close(got.double().cpu(), value.double().cpu(), rtol=rtol, atol=2e-6, msg=name)


# ------------------------------------------------------------------------------------------------
# The reference against itself: finite differences and hand-derived values.
# ------------------------------------------------------------------------------------------------


def test_reference_gradient_matches_finite_differences():
    batch = make_batch(2, 3, 5, seed=3, garbage_padding=False)
    logits = batch["logits"].double().requires_grad_()

    def f(x):
        return reference_rapo(
            x, batch["ids"], batch["old"], batch["ref"], batch["adv"], batch["mask"], temperature=0.8
        )[0]

    assert torch.autograd.gradcheck(f, (logits,), eps=1e-6, atol=1e-6)


def test_reference_single_token_by_hand():
    # One token, V = 2: logp = log(sigmoid(x1 - x0)); check every term against closed forms.
    logits = torch.tensor([[[0.0, 1.0]]], dtype=torch.float64)
    logp = -math.log1p(math.exp(-1.0))
    old = torch.tensor([[logp - math.log(1.5)]], dtype=torch.float64)  # ratio 1.5 > 1.28: clipped for A > 0
    ref = torch.tensor([[logp + 0.5]], dtype=torch.float64)
    adv = torch.tensor([2.0])
    mask = torch.ones(1, 1)
    loss, metrics = reference_rapo(logits, torch.tensor([[1]]), old, ref, adv, mask, beta=0.1)
    kl = math.exp(0.5) - 0.5 - 1
    assert loss.item() == pytest.approx(-(1.28 * 2.0) + 0.1 * kl, rel=1e-9)
    assert metrics["clip_frac_high"].item() == 1.0 and metrics["clip_frac_low"].item() == 0.0
    assert metrics["ratio_mean"].item() == pytest.approx(1.5, rel=1e-9)
    p = 1 / (1 + math.exp(-1.0))
    assert metrics["entropy"].item() == pytest.approx(
        -(p * math.log(p) + (1 - p) * math.log(1 - p)), rel=1e-9
    )
