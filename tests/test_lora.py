"""LoRA (peft) for both stages on the tiny Qwen2.5-VL (CPU, float32): targets and bad input, the
reference log-probs from the policy's own weights, the decode engine on a PeftModel, saving and
loading adapters, and resume of both stages with adapters."""

# ruff: noqa: F811 (the fixtures imported from test_train_rapo are test arguments here)
from __future__ import annotations

import copy

import pytest
import torch
from test_train_rapo import _Killed, items, small_config  # noqa: F401 (fixtures)

from aesr1.modeling.loading import load_model
from aesr1.modeling.lora import (
    REFERENCE_ADAPTER,
    add_reference_adapter,
    apply_lora,
    is_peft_model,
    lora_target_names,
    save_adapter,
)
from aesr1.train.config import LoraConfig, config_from_dict, validate_config
from aesr1.train.logprobs import sequence_logprobs
from aesr1.train.rapo import RAPOTrainer
from aesr1.train.tracking import read_metrics


def _randomise_adapter(model, seed: int, std: float = 0.05) -> None:
    """peft starts lora_B at 0 (the adapter is the identity): give it weights that change the model."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name and f".{REFERENCE_ADAPTER}." not in name:
                parameter.copy_(std * torch.randn(parameter.shape, generator=generator))


@pytest.fixture(scope="module")
def trained():
    """The tiny random model (what these tests check needs no parseable samples)."""
    from aesr1.modeling.tiny import build_tiny_model

    return build_tiny_model(0)


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    """The tiny model saved as a base directory, and a "cold-start" adapter on it."""
    model, processor = trained
    base = tmp_path_factory.mktemp("base")
    model.save_pretrained(base)
    processor.save_pretrained(base)
    torch.manual_seed(0)
    wrapped = apply_lora(copy.deepcopy(model), LoraConfig(r=4), base_path=base)
    _randomise_adapter(wrapped, seed=1)
    adapter = tmp_path_factory.mktemp("adapter")
    save_adapter(wrapped, adapter)
    processor.save_pretrained(adapter)
    return base, adapter


# ------------------------------------------------------------------------------------------------
# targets and bad input


def test_targets_are_language_model_linears_only(trained):
    model, _ = trained
    names = lora_target_names(model, ["q_proj", "down_proj"])
    assert names and all(n.startswith("model.language_model.") for n in names)
    assert {n.rsplit(".", 1)[-1] for n in names} == {"q_proj", "down_proj"}
    # the vision blocks also have a down_proj and the projector linears: neither is adapted
    assert not any("visual" in n for n in names)
    wrapped = apply_lora(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj", "down_proj"]))
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    assert len(trainable) == 2 * len(names)  # lora_A and lora_B per adapted module


def test_a_target_that_matches_nothing_is_named_with_the_existing_ones(trained):
    model, _ = trained
    with pytest.raises(ValueError, match=r"'q_projection' matches no linear module .*q_proj"):
        lora_target_names(model, ["q_proj", "q_projection"])
    # `qkv` exists only in the vision tower, which is never adapted
    with pytest.raises(ValueError, match="'qkv' matches no linear module of the language model"):
        apply_lora(copy.deepcopy(model), LoraConfig(r=4, target_modules=["qkv"]))


@pytest.mark.parametrize("rank", [0, -2])
def test_a_rank_below_one_is_refused(rank):
    with pytest.raises(ValueError, match=f"model.lora.r must be >= 1, got {rank}"):
        config_from_dict({"model": {"lora": {"r": rank}}})


def test_merge_options_without_lora_are_refused(tmp_path, capsys):
    from aesr1.train.__main__ import main

    assert main(["--merge", "--output-dir", str(tmp_path / "run"), "--set", "data.synthetic_n=8"]) == 2
    err = capsys.readouterr().err
    assert "--merge" in err and "model.lora.r" in err
    config = config_from_dict({"model": {"lora": {"merge_before_rapo": True}}}, validate=False)
    with pytest.raises(ValueError, match="merge_before_rapo needs LoRA"):
        validate_config(config)
    with pytest.raises(ValueError, match="non-empty list"):
        validate_config(config_from_dict({"model": {"lora": {"r": 4, "target_modules": []}}}, validate=False))


# ------------------------------------------------------------------------------------------------
# loading


def test_an_adapter_directory_loads_merged_or_trainable(saved, trained, items):
    from aesr1.modeling.chat import build_inputs, model_inputs

    base, adapter = saved
    model, processor = trained
    completion = ["<think>a</think><answer>0.5</answer>"]
    batch = model_inputs(build_inputs(processor, [items[0].image], "Rate <image>", completion))
    unmerged, _ = load_model(adapter, merge_adapter=False)
    assert is_peft_model(unmerged) and any(p.requires_grad for p in unmerged.parameters())
    merged, loaded_processor = load_model(adapter)
    assert not is_peft_model(merged)
    assert loaded_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    plain, _ = load_model(base)
    unmerged.eval()
    with torch.no_grad():
        want = unmerged(**batch).logits
        got = merged(**batch).logits
        untouched = plain(**batch).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - untouched).abs().max() > 1e-2  # the adapter changes the model
    with pytest.raises(FileNotFoundError, match="config.json or adapter_config.json"):
        load_model(base.parent)


# ------------------------------------------------------------------------------------------------
# the reference for free


def _lora_trainer(config, saved, items, out, *, continue_adapter: bool):
    """RAPOTrainer on a PeftModel: the saved adapter continued (with its frozen reference copy), or a
    fresh adapter on the base weights."""
    base, adapter = saved
    if continue_adapter:
        model, processor = load_model(adapter, merge_adapter=False)
        add_reference_adapter(model, adapter)
    else:
        model, processor = load_model(base)
        torch.manual_seed(3)
        model = apply_lora(model, LoraConfig(r=4), base_path=base)
        _randomise_adapter(model, seed=2)  # a policy away from the reference
    return RAPOTrainer(config, model, processor, items, output_dir=out)


@pytest.mark.parametrize(
    ("continue_adapter", "fused"),
    [(False, False), (True, True)],
    ids=["fresh-adapter", "continued-adapter-fused"],
)
def test_reference_logprobs_equal_a_separately_loaded_reference(
    saved,
    items,
    tmp_path,
    fused,
    continue_adapter,
):
    """No second model: with the adapter disabled (fresh adapter on the base weights) or the frozen
    copy of the cold-start adapter switched in (continued adapter), the policy's own forward gives
    the log-probs of the reference loaded on its own, also after the policy has moved."""
    config = small_config(tmp_path, fused_linear=fused, beta=0.05, max_completion_length=16)
    trainer = _lora_trainer(config, saved, items, tmp_path, continue_adapter=continue_adapter)
    base, adapter = saved
    reference, _ = load_model(adapter, merge_adapter=False) if continue_adapter else load_model(base)
    reference.eval()
    _randomise_adapter(trainer.model, seed=4)  # the policy adapter moves (the reference copy must not)
    data = trainer.generate_round(0)
    kwargs = dict(temperature=1.0, backend="torch", fused_linear=fused)
    want = sequence_logprobs(reference, reference, data.batch, **kwargs)
    torch.testing.assert_close(data.ref_logp, want, atol=1e-6, rtol=0)
    mask = data.batch["completion_mask"].bool()
    assert (data.old_logp - data.ref_logp)[mask].abs().max() > 1e-3  # policy and reference differ
    # the switch leaves the policy adapter trainable and the reference frozen
    flags = {n: p.requires_grad for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert all(flag == (f".{REFERENCE_ADAPTER}." not in n) for n, flag in flags.items())
    assert trainer.model.active_adapter == "default"


def test_a_peft_policy_takes_no_reference_model(saved, items, tmp_path):
    trainer = _lora_trainer(small_config(tmp_path), saved, items, tmp_path, continue_adapter=False)
    with pytest.raises(ValueError, match="pass no ref_model"):
        RAPOTrainer(small_config(tmp_path), trainer.model, trainer.processor, items, output_dir=tmp_path,
                    ref_model=copy.deepcopy(trainer.model))  # fmt: skip


# ------------------------------------------------------------------------------------------------
# the decode engine samples a PeftModel


def test_the_engine_samples_a_peft_model_as_its_merged_weights(saved):
    from aesr1.generation import SamplingConfig
    from aesr1.rollout import engine_blockers, generate_rollouts

    base, adapter = saved
    model, processor = load_model(adapter, merge_adapter=False)
    add_reference_adapter(model, adapter)
    model.eval()
    merged, _ = load_model(adapter)
    assert engine_blockers(model) == []
    images = [torch.full((3, 40, 40), v, dtype=torch.uint8).permute(1, 2, 0).numpy() for v in (30, 200)]
    from PIL import Image

    images = [Image.fromarray(i) for i in images]
    sampling = SamplingConfig(num_samples=3, max_new_tokens=12, temperature=1.0)
    got = generate_rollouts(model, processor, images, sampling, seed=5, engine="engine")
    want = generate_rollouts(merged, processor, images, sampling, seed=5, engine="engine")
    assert got.texts == want.texts
    torch.testing.assert_close(
        got.batch["sampling_logprobs"], want.batch["sampling_logprobs"], atol=1e-4, rtol=0
    )
    greedy = SamplingConfig(num_samples=1, max_new_tokens=12, do_sample=False)
    from aesr1.rollout import generate_rollouts_hf

    engine = generate_rollouts(model, processor, images, greedy, engine="engine")
    hf = generate_rollouts_hf(model, processor, images, greedy)
    assert engine.texts == hf.texts


# ------------------------------------------------------------------------------------------------
# resume


def test_lora_rapo_kill_and_resume_gives_identical_state(saved, items, tmp_path):
    """As the full fine-tuning test: adapter, optimiser, scheduler, data position and every logged row."""
    steps = 2  # 2 rounds of 1 step; a checkpoint after each round

    def make(directory):
        # a fresh adapter away from its base: the KL term moves it though no sample parses
        config = small_config(
            directory, max_steps=steps, max_completion_length=10, beta=0.5, steps_per_generation=1
        )
        return _lora_trainer(config_from_dict({"save_steps": 1}, config), saved, items, directory,
                             continue_adapter=False)  # fmt: skip

    full = make(tmp_path / "full")
    full.train()
    killed_dir = tmp_path / "killed"
    killed = make(killed_dir)
    original = killed.generate_round

    def dies_in_round_one(round_index):
        if round_index == 1:
            raise _Killed
        return original(round_index)

    killed.generate_round = dies_in_round_one
    with pytest.raises(_Killed):
        killed.train()
    assert killed.latest_checkpoint().name == "checkpoint-1"
    del killed
    resumed = make(killed_dir)
    resumed.train(resume=True)
    assert resumed.position.state_dict() == full.position.state_dict()
    moved = 0
    for (name, a), (_, b) in zip(
        full.model.named_parameters(), resumed.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
        moved += int("lora_B.default" in name)
    assert moved > 0
    sa, sb = full.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys() and len(sa) == moved * 2  # lora_A and lora_B of the policy adapter only
    for key in sa:
        for field in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(sa[key][field]), torch.as_tensor(sb[key][field])), (key, field)
    assert full.scheduler.state_dict() == resumed.scheduler.state_dict()
    rows = [r for r in read_metrics(killed_dir / "rapo_metrics.jsonl") if "loss" in r]
    want = [r for r in read_metrics(tmp_path / "full" / "rapo_metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert [r["loss"] for r in rows] == [r["loss"] for r in want]
    assert [r["kl"] for r in rows] == [r["kl"] for r in want] and want[-1]["kl"] > 0


def test_lora_sft_killed_resumes_bit_identically(tmp_path):
    """trl's SFTTrainer with an adapter: killed after its checkpoint, the resumed run's rows and
    saved adapter equal an uninterrupted run's."""
    from safetensors.torch import load_file
    from test_train_sft import _dies_after_step, _steps, sft_config, tiny
    from test_train_sft import _Killed as SFTKilled

    from aesr1.data.synthetic import make_synthetic_dataset, write_critique
    from aesr1.prompts import SCORING_PROMPT, format_completion
    from aesr1.train.sft import run_sft

    synthetic = make_synthetic_dataset(tmp_path / "syn", n=8, seed=2, image_size=32)
    rows = [{"image": i.image, "prompt": SCORING_PROMPT, "completion": format_completion(write_critique(i), i.score)}
            for i in synthetic]  # fmt: skip

    def run(directory, **kwargs):
        model, processor = tiny(rows)
        config = config_from_dict(
            {"model": {"lora": {"r": 4}}},
            sft_config(
                directory,
                save_steps=2,
                lr_scheduler_type="linear",
                num_train_epochs=2,
                global_batch_size=4,
                per_device_train_batch_size=4,
                max_completion_length=24,
            ),
        )  # 4 steps
        torch.manual_seed(0)  # the adapter's initial lora_A
        return run_sft(config, model, processor, rows, directory / "sft", base_path=directory, **kwargs)

    run(tmp_path / "full")
    killed = tmp_path / "killed"
    with pytest.raises(SFTKilled):
        run(killed, callbacks=[_dies_after_step(3)])  # after checkpoint-2
    run(killed, resume=True)
    assert _steps(killed / "sft" / "sft_metrics.jsonl") == _steps(
        tmp_path / "full" / "sft" / "sft_metrics.jsonl"
    )
    final = killed / "sft" / "final"
    assert not (final / "model.safetensors").exists() and (final / "adapter_config.json").is_file()
    ours = load_file(final / "adapter_model.safetensors")
    theirs = load_file(tmp_path / "full" / "sft" / "final" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys() and all(ours[name].equal(theirs[name]) for name in theirs)
    assert any(ours[name].abs().sum() > 0 for name in ours if "lora_B" in name)  # trained
