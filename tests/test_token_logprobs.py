"""`aesr1.loss.token_logprobs`: per-token log-probs (and entropies) against float64 log_softmax."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_loss_reference import DEVICE_BACKENDS, require_backend

from aesr1.loss import rapo_loss, token_logprobs
from aesr1.triton_kernels.token_logprobs import token_logprobs_reference


def exact(logits, ids, temperature):
    log_probs = torch.log_softmax(logits.double().cpu() / temperature, -1)
    logp = log_probs.gather(-1, ids.cpu().long().unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).nan_to_num().sum(-1)
    return logp, entropy


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("vocab", [37, 1000, 1031])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_float64_log_softmax(device, backend, vocab, dtype):
    require_backend(device, backend)
    g = torch.Generator().manual_seed(vocab)
    logits = (torch.randn(3, 7, vocab, generator=g) * 4).to(dtype).to(device)
    ids = torch.randint(0, vocab, (3, 7), generator=g).to(device)
    logp, entropy = token_logprobs(logits, ids, 0.6, entropy=True, backend=backend)
    assert logp.dtype == torch.float32 and logp.shape == (3, 7) and not logp.requires_grad
    want_logp, want_entropy = exact(logits, ids, 0.6)
    torch.testing.assert_close(logp.cpu().double(), want_logp, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(entropy.cpu().double(), want_entropy, rtol=1e-5, atol=2e-5)
    only_logp = token_logprobs(logits, ids, 0.6, backend=backend)
    assert torch.equal(only_logp, logp)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_mask_skips_padding_and_its_ids(device, backend):
    require_backend(device, backend)
    logits = torch.randn(2, 4, 50, device=device)
    ids = torch.randint(0, 50, (2, 4), device=device)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], device=device)
    ids[mask == 0] = -100
    logp = token_logprobs(logits, ids, mask=mask, backend=backend)
    want, _ = exact(logits, ids.clamp(min=0), 1.0)
    torch.testing.assert_close(
        logp.cpu().double(), torch.where(mask.cpu().bool(), want, 0.0), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="completion_ids"):
        token_logprobs(logits, ids, backend=backend)  # without the mask the -100 ids are errors


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_log_probs_of_the_loss_and_of_token_logprobs_are_identical(device, backend):
    """Same kernel, same reduction order: the on-policy ratio is exactly 1 in every token."""
    require_backend(device, backend)
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 6, 1031, generator=g) * 5).to(torch.bfloat16).to(device)
    ids = torch.randint(0, 1031, (2, 6), generator=g).to(device)
    mask = torch.ones(2, 6, device=device)
    old = token_logprobs(logits, ids, 1.3, backend=backend)
    _, metrics = rapo_loss(
        logits,
        ids,
        old,
        None,
        torch.tensor([1.0, -1.0], device=device),
        mask,
        beta=0.0,
        temperature=1.3,
        backend=backend,
    )
    assert metrics["ratio_min"].item() == 1.0 == metrics["ratio_max"].item()


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("logits", dict(logits=torch.zeros(2, 3))),
        ("logits", dict(logits=torch.zeros(0, 3, 5))),
        ("logits", dict(logits=torch.zeros(2, 3, 5, dtype=torch.int64))),
        ("completion_ids", dict(ids=torch.full((2, 3), 5))),
        ("completion_ids", dict(ids=torch.zeros(2, 4, dtype=torch.long))),
        ("temperature", dict(temperature=-1.0)),
        ("mask", dict(mask=torch.ones(2, 2))),
    ],
)
def test_bad_input_names_the_argument(name, kwargs):
    logits = kwargs.pop("logits", torch.zeros(2, 3, 5))
    ids = kwargs.pop("ids", torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=name):
        token_logprobs(logits, ids, **kwargs)


@settings(max_examples=30, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 300)),
    scale=st.sampled_from([0.01, 1.0, 30.0]),
    shift=st.sampled_from([0.0, -500.0, 300.0]),
    temperature=st.sampled_from([0.3, 1.0, 2.0]),
    seed=st.integers(0, 1000),
)
def test_property_torch_path_and_eager_reference_agree_with_float64(shape, scale, shift, temperature, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=g) * scale + shift
    ids = torch.randint(0, shape[2], shape[:2], generator=g)
    want_logp, want_entropy = exact(logits, ids, temperature)
    for logp, entropy in (
        token_logprobs(logits, ids, temperature, entropy=True, backend="torch"),
        token_logprobs_reference(logits, ids, temperature),
    ):
        torch.testing.assert_close(logp.double(), want_logp, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(entropy.double(), want_entropy, rtol=1e-4, atol=1e-4)
