"""The trainer's fused-linear path (no full logits), vision freezing, rollout backends and the
sampler-drift metric, on a tiny Qwen2.5-VL on CPU."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from aesr1.data.synthetic import make_synthetic_dataset
from aesr1.loss import RapoLossConfig
from aesr1.modeling.freeze import freeze_vision
from aesr1.modeling.tiny import build_tiny_model
from aesr1.train.config import config_from_dict
from aesr1.train.logprobs import policy_loss, sequence_logprobs
from aesr1.train.rapo import RAPOTrainer


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn"), n=8, seed=3, image_size=32)


def make_trainer(tmp_path, items, model=None, **rapo):
    values = {"output_dir": str(tmp_path), "progress": False, "report_to": [],
              "rapo": {"num_generations": 2, "mini_batch_size": 8, "steps_per_generation": 1, "per_device_train_batch_size": 4,
                       "max_completion_length": 8, "learning_rate": 1e-2, "max_steps": 2, "beta": 0.0, **rapo},
              "reward": {"format": 1.0}, "eval": {"eval_steps": 0}}  # fmt: skip
    if model is None:
        model, processor = build_tiny_model(seed=0)
    else:
        model, processor = model
    ref = copy.deepcopy(model) if values["rapo"]["beta"] > 0 else None
    return RAPOTrainer(config_from_dict(values), model, processor, items, ref_model=ref, output_dir=tmp_path)


@pytest.fixture(scope="module")
def round_data(items, tmp_path_factory):
    trainer = make_trainer(tmp_path_factory.mktemp("round"), items, fused_linear=False)
    data = trainer.generate_round(0)
    generator = torch.Generator().manual_seed(0)
    data.advantages = torch.randn(data.advantages.shape, generator=generator)
    ref = (
        data.batch["completion_mask"]
        * -0.3
        * torch.rand(data.batch["completion_mask"].shape, generator=generator)
    )
    return trainer, data, ref - 5.0


def test_hidden_state_logprobs_equal_logits_logprobs(round_data):
    trainer, data, _ = round_data
    model = trainer.accelerator.unwrap_model(trainer.model)
    with_logits = sequence_logprobs(
        model, model, data.batch, temperature=0.7, backend="torch", fused_linear=False
    )
    from_hidden = sequence_logprobs(
        model, model, data.batch, temperature=0.7, backend="torch", fused_linear=True
    )
    torch.testing.assert_close(from_hidden, with_logits, rtol=1e-5, atol=1e-5)
    assert torch.all(from_hidden[data.batch["completion_mask"] == 0] == 0)
    assert from_hidden[data.batch["completion_mask"] == 1].lt(0).all()


@pytest.mark.parametrize("beta", [0.0, 0.2])
def test_fused_loss_and_gradients_equal_the_logits_path(round_data, beta):
    trainer, data, ref = round_data
    model = trainer.accelerator.unwrap_model(trainer.model)
    batch = data.batch
    old = batch["completion_mask"] * -2.0 + 0.05 * torch.randn(
        ref.shape, generator=torch.Generator().manual_seed(1)
    )
    inputs = dict(old_logp=old, ref_logp=ref if beta else None, advantages=data.advantages)
    loss_config = RapoLossConfig(beta=beta, backend="torch")
    results = {}
    for fused in (False, True):
        model.zero_grad(set_to_none=True)
        loss, metrics = policy_loss(
            model, model, batch, **inputs, loss_config=loss_config, fused_linear=fused
        )
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[fused] = (loss.detach(), metrics, grads)
    model.zero_grad(set_to_none=True)
    (loss_l, metrics_l, grads_l), (loss_f, metrics_f, grads_f) = results[False], results[True]
    torch.testing.assert_close(loss_f, loss_l, rtol=1e-5, atol=1e-7)
    for name in ("kl", "clip_frac_low", "clip_frac_high", "entropy", "ratio_mean"):
        torch.testing.assert_close(metrics_f[name], metrics_l[name], rtol=1e-5, atol=1e-6, equal_nan=True)
    assert grads_f.keys() == grads_l.keys() and "lm_head.weight" in grads_f
    for name in grads_l:
        torch.testing.assert_close(grads_f[name], grads_l[name], rtol=1e-4, atol=1e-6, msg=name)
    assert grads_f["lm_head.weight"].abs().sum() > 0


def test_fused_path_never_runs_the_plain_lm_head(round_data):
    """lm_head is entered as a module (hooks fire, as ZeRO-3 needs) but its own forward, which
    would make the (B, T, V) logits, never runs."""
    trainer, data, ref = round_data
    model = trainer.accelerator.unwrap_model(trainer.model)
    head = model.get_output_embeddings()
    calls = []
    hook = head.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape))

    def refuse(*args, **kwargs):
        raise AssertionError("full logits computed")

    head.forward = refuse
    try:
        batch = data.batch
        inputs = dict(old_logp=None, ref_logp=None, advantages=data.advantages)
        loss_config = RapoLossConfig(beta=0.0, backend="torch")
        loss, _ = policy_loss(model, model, batch, **inputs, loss_config=loss_config, fused_linear=True)
        loss.backward()
        sequence_logprobs(model, model, batch, temperature=1.0, backend="torch", fused_linear=True)
        with pytest.raises(AssertionError, match="full logits"):
            policy_loss(model, model, batch, **inputs, loss_config=loss_config, fused_linear=False)
    finally:
        del head.forward
        hook.remove()
        model.zero_grad(set_to_none=True)
    width = batch["completion_ids"].shape[1]
    # two fused calls on the T scoring positions; the plain path enters lm_head with T + 1 positions
    assert [shape[1] for shape in calls] == [width, width, width + 1]


def test_freeze_vision_tower_and_projector():
    model, _ = build_tiny_model(seed=0)
    visual = model.model.visual
    frozen = freeze_vision(model, tower=True, projector=False)
    assert frozen == sum(p.numel() for n, p in visual.named_parameters() if not n.startswith("merger."))
    assert all(p.requires_grad for p in visual.merger.parameters())
    assert not any(p.requires_grad for p in visual.blocks.parameters())
    assert freeze_vision(model, tower=False, projector=True) == sum(
        p.numel() for p in visual.merger.parameters()
    )
    assert all(p.requires_grad for p in model.model.language_model.parameters())
    assert freeze_vision(model, tower=False, projector=False) == 0
    with pytest.raises(TypeError, match="visual"):
        freeze_vision(torch.nn.Linear(2, 2), tower=True, projector=False)


def test_frozen_vision_stays_put_through_rapo_steps(items, tmp_path):
    trainer = make_trainer(
        tmp_path, items, freeze_vision_tower=True, freeze_projector=True, fused_linear=True
    )
    model = trainer.accelerator.unwrap_model(trainer.model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = trainer.generate_round(0)
    data.advantages = torch.randn(data.advantages.shape, generator=torch.Generator().manual_seed(2))
    trainer.optimiser_step(data, list(range(data.batch["completion_ids"].shape[0])))
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and not any(n.startswith("model.visual.") for n in moved)
    assert "lm_head.weight" in moved


def test_rollout_backend_generate_records_sampling_logprobs_and_drift(items, tmp_path):
    trainer = make_trainer(
        tmp_path, items, rollout={"backend": "generate"}, steps_per_generation=2, mini_batch_size=4
    )
    data = trainer.generate_round(0)
    sampled = data.batch["sampling_logprobs"]
    mask = data.batch["completion_mask"].bool()
    assert sampled.shape == data.batch["completion_ids"].shape and torch.all(sampled[~mask] == 0)
    # The sampler draws from the policy with the vision/chat tokens suppressed (generate, KV cache):
    # the training forward with those tokens masked gives the same log-probs in fp32 ...
    from aesr1.train.logprobs import completion_logits
    from aesr1.train.rapo import NEVER_SAMPLE

    tokenizer = trainer.processor.tokenizer
    with torch.no_grad():
        logits = completion_logits(trainer.model, data.batch).float()
    logits[..., [tokenizer.convert_tokens_to_ids(t) for t in NEVER_SAMPLE]] = -torch.inf
    expected = logits.log_softmax(-1).gather(-1, data.batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(sampled[mask], expected[mask], rtol=1e-4, atol=1e-4)
    # ... and the drift to the unmasked old log-probs is the suppressed tokens' mass, logged.
    gap = (sampled - data.old_logp)[mask]
    assert gap.min() > 0
    assert data.stats["rollout_logprob_drift/mean"] == pytest.approx(gap.mean().item(), rel=1e-5)
    assert data.stats["rollout_logprob_drift/max"] == pytest.approx(gap.max().item(), rel=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="checks the error without vLLM")
def test_vllm_backend_without_vllm_says_how_to_install(items, tmp_path):
    with pytest.raises(ImportError, match="pip install"):
        make_trainer(tmp_path, items, rollout={"backend": "vllm"})


class _FakeFlashModel:
    """Just what `engine_attention` reads: the attention setting, a parameter's device, the setter."""

    def __init__(self, device_type: str):
        self.config = type("Config", (), {"_attn_implementation": "flash_attention_2"})()
        self.device = type("Device", (), {"type": device_type})()
        self.calls = []

    def parameters(self):
        yield type("Param", (), {"device": self.device})()

    def set_attn_implementation(self, name):
        self.calls.append(name)
        self.config._attn_implementation = name


def test_engine_samples_a_flash_attention_model_with_sdpa_and_restores_it():
    from aesr1.train.rapo import engine_attention

    model = _FakeFlashModel("cuda")
    with engine_attention(model, "engine"):
        assert model.config._attn_implementation == "sdpa"
    assert model.config._attn_implementation == "flash_attention_2" and model.calls == [
        "sdpa",
        "flash_attention_2",
    ]
    for backend, device in (("generate", "cuda"), ("vllm", "cuda"), ("engine", "cpu")):
        other = _FakeFlashModel(device)
        with engine_attention(other, backend):
            assert other.config._attn_implementation == "flash_attention_2"
        assert other.calls == []
    failing = _FakeFlashModel("cuda")
    with pytest.raises(RuntimeError), engine_attention(failing, "engine"):
        raise RuntimeError("decode failed")
    assert failing.config._attn_implementation == "flash_attention_2"
