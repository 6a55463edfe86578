"""`aesr1.train.plan` and `python -m aesr1.train --plan`: parameter counts against built models,
the memory arithmetic against hand computations (float64), and the command line."""

from __future__ import annotations

import copy
import json
import math

import pytest

from aesr1.train.config import config_from_dict, embedded_default, load_config
from aesr1.train.plan import (
    CUDA_CONTEXT_BYTES,
    FRAGMENTATION,
    KNOWN_MODELS,
    Architecture,
    architecture_for,
    image_tokens,
    known_size,
    parse_memory_size,
    plan_memory,
    prompt_tokens,
    tiny_architecture,
)

GiB = 2**30


@pytest.fixture(scope="module")
def tiny():
    """The embedded default's tiny model, built (tokenizer trained on the default corpus)."""
    from aesr1.modeling.tiny import build_tiny_model
    from aesr1.train.pipeline import tiny_model_config

    config = embedded_default()
    model, _ = build_tiny_model(config.model.tiny_seed, config=tiny_model_config(config.model))
    return config, model


def _items(stage, phase: str | None = None) -> dict[str, float]:
    """The persistent items of `stage` and those of one of its phases, by name."""
    found = {i.name: i.nbytes for i in stage.persistent}
    if phase is not None:
        found.update({i.name: i.nbytes for i in stage.phases[phase]})
    return found


def _stage(plan, name: str):
    return next(s for s in plan.stages if s.stage.startswith(name))


def _arch(size: str) -> Architecture:
    from transformers import Qwen2_5_VLConfig

    return Architecture.from_hf_config(Qwen2_5_VLConfig(**KNOWN_MODELS[size]), size)


# ---------------------------------------------------------------------------------------------------
# Parameter counts


def test_tiny_parameter_counts_equal_the_built_model(tiny):
    config, model = tiny
    arch = tiny_architecture(config)
    parts = {"lm": 0, "head": 0, "tower": 0, "merger": 0}
    for name, p in model.named_parameters():
        key = (
            "head"
            if name.startswith("lm_head")
            else "merger"
            if ".merger." in name
            else "tower"
            if ".visual." in name
            else "lm"
        )
        parts[key] += p.numel()
    assert parts == {
        "lm": arch.language_model_params(),
        "head": arch.lm_head_params(),
        "tower": arch.vision_tower_params(),
        "merger": arch.projector_params(),
    }
    assert arch.total_params() == sum(p.numel() for p in model.parameters())
    # the same architecture read back from the model's own config
    read = Architecture.from_hf_config(model.config, "read")
    assert read.total_params() == arch.total_params()
    assert (read.vocab_size, read.num_kv_heads, read.head_dim) == (
        arch.vocab_size,
        arch.num_kv_heads,
        arch.head_dim,
    )


@pytest.mark.parametrize("size", sorted(KNOWN_MODELS))
def test_builtin_sizes_count_what_transformers_builds(size):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):  # shapes only, no memory
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**KNOWN_MODELS[size]))
    assert _arch(size).total_params() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("targets", [["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                     ["q_proj", "down_proj"]])  # fmt: skip
def test_lora_parameters_equal_peft(tiny, targets):
    from peft import LoraConfig, get_peft_model

    config, model = tiny
    arch = tiny_architecture(config)
    names = [
        n for n, _ in model.named_modules() if ".language_model." in n and n.rsplit(".", 1)[-1] in targets
    ]
    wrapped = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=names))
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    # hand: r x (in + out) per adapted linear, layers x targets, in float64
    h, f, kv = (
        float(arch.hidden_size),
        float(arch.intermediate_size),
        float(arch.num_kv_heads * arch.head_dim),
    )
    shapes = {"q_proj": h + h, "k_proj": h + kv, "v_proj": h + kv, "o_proj": h + h,
              "gate_proj": h + f, "up_proj": h + f, "down_proj": f + h}  # fmt: skip
    assert (
        trainable == arch.lora_params(4, targets) == 4.0 * arch.num_layers * sum(shapes[t] for t in targets)
    )


def test_unknown_lora_target_is_named():
    with pytest.raises(ValueError, match="'mlp.fc1'"):
        _arch("7B").lora_params(8, ["q_proj", "mlp.fc1"])


# ---------------------------------------------------------------------------------------------------
# Memory arithmetic


def _config(**values):
    base = {"model": {"name_or_path": "Qwen2.5-VL-7B-Instruct", "gradient_checkpointing": True},
            "data": {"spec": "ava:/data/AVA"}}  # fmt: skip
    for key, value in values.items():
        section, _, name = key.partition("__")
        if name:
            base.setdefault(section, {})[name] = value
        else:
            base[section] = value
    return config_from_dict(base)


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_partitions_divide_by_the_world_size(stage):
    config = _config(deepspeed=f"zero{stage}")
    arch = _arch("7B")
    total, trainable = float(arch.total_params()), float(arch.total_params())
    for world in (1, 8):
        items = _items(_stage(plan_memory(config, world), "RAPO"), "rollout")
        weights = total * 2 / (world if stage == 3 else 1)
        assert items["weights (bfloat16)"] == pytest.approx(weights, rel=1e-12)
        assert items["gradients (bfloat16)"] == pytest.approx(trainable * 2 / world, rel=1e-12)
        assert items["AdamW states (fp32 master + m + v)"] == pytest.approx(trainable * 12 / world, rel=1e-12)
        # the reference is partitioned like the policy under ZeRO-3 only (trl's prepare_deepspeed)
        assert items["reference model"] == pytest.approx(weights, rel=1e-12)
        assert ("weights gathered for generation" in items) == (stage == 3)


def test_offload_moves_states_off_the_gpu():
    arch = _arch("7B")
    trainable = float(arch.total_params())
    plan = plan_memory(_config(deepspeed="zero3_offload"), 4)
    stage = _stage(plan, "RAPO")
    items = _items(stage, "rollout")
    assert items["weights (bfloat16)"] == 0 and items["AdamW states"] == 0 and items["reference model"] == 0
    host = {i.name: i.nbytes for i in stage.host}
    assert host["fp32 gradients, master weights, AdamW moments"] == pytest.approx(
        trainable * 16 / 4, rel=1e-12
    )
    assert host["weights (offloaded)"] == pytest.approx(arch.total_params() * 2 / 4, rel=1e-12)
    assert items["gradient buckets (bfloat16)"] == 2.0 * arch.hidden_size**2 * 2
    # the rollout still gathers every weight onto the GPU
    assert items["weights gathered for generation"] == arch.total_params() * 2


def test_lora_has_no_reference_copy():
    arch = _arch("7B")
    full = _items(_stage(plan_memory(_config(rapo__beta=0.01)), "RAPO"))
    assert full["reference model"] == arch.total_params() * 2
    adapters = float(arch.lora_params(16, list(arch.linear_shapes())))
    continued = _items(_stage(plan_memory(_config(model__lora={"r": 16})), "RAPO"))
    assert continued["reference (frozen cold-start adapter)"] == pytest.approx(adapters * 4, rel=1e-12)
    merged = _items(_stage(plan_memory(_config(model__lora={"r": 16, "merge_before_rapo": True})), "RAPO"))
    assert merged["reference model"] == 0
    assert "reference model" not in _items(_stage(plan_memory(_config(rapo__beta=0.0)), "RAPO"))
    # adapters only train: fp32 weights, gradients and two moments beside the bf16 base weights
    assert continued["weights (bfloat16)"] == pytest.approx(
        arch.total_params() * 2.0 + adapters * 4, rel=1e-12
    )
    assert continued["gradients"] + continued["AdamW states (m + v)"] == pytest.approx(
        adapters * 12, rel=1e-12
    )


def test_checkpointing_shrinks_activations_as_computed_by_hand():
    arch = _arch("7B")
    rows, completion = 3, 512
    config = _config(rapo__per_device_train_batch_size=rows, rapo__max_completion_length=completion,
                     rapo__freeze_vision_tower=True)  # fmt: skip
    tokens = float(prompt_tokens(config)[1] + completion) * rows
    h, f, a = float(arch.hidden_size), float(arch.intermediate_size), float(arch.num_heads * arch.head_dim)
    k = float(arch.num_kv_heads * arch.head_dim)
    per_layer = 8 * h + 2 * (4 * h + 3 * a + 2 * k + 4 * f)  # bytes per token, bf16
    acts = _stage(plan_memory(config), "RAPO").activations
    assert acts["without checkpointing"] == pytest.approx(arch.num_layers * per_layer * tokens, rel=1e-12)
    assert acts["with checkpointing"] == pytest.approx(
        (arch.num_layers * 2 * h + per_layer) * tokens, rel=1e-12
    )
    assert acts["with checkpointing"] < acts["without checkpointing"] / 5
    # the configured one is what the step counts
    counted = _items(_stage(plan_memory(config), "RAPO"), "training step")["activations (with checkpointing)"]
    assert counted == acts["with checkpointing"]
    off = _config(model={"name_or_path": "Qwen2.5-VL-7B-Instruct", "gradient_checkpointing": False},
                  rapo__per_device_train_batch_size=rows, rapo__max_completion_length=completion,
                  rapo__freeze_vision_tower=True)  # fmt: skip
    assert (
        _items(_stage(plan_memory(off), "RAPO"), "training step")["activations (without checkpointing)"]
        == acts["without checkpointing"]
    )
    eager = _config(model={"name_or_path": "Qwen2.5-VL-7B-Instruct", "attn_implementation": "eager"},
                    rapo__per_device_train_batch_size=rows, rapo__max_completion_length=completion,
                    rapo__freeze_vision_tower=True)  # fmt: skip
    scores = arch.num_layers * 2.0 * 2 * arch.num_heads * (tokens / rows) * tokens
    assert _stage(plan_memory(eager), "RAPO").activations["without checkpointing"] == pytest.approx(
        acts["without checkpointing"] + scores, rel=1e-12
    )


def test_kv_cache_and_logits_by_hand():
    arch = _arch("7B")
    config = _config(rapo__mini_batch_size=16, rapo__steps_per_generation=2, rapo__fused_linear=False,
                     rapo__per_device_train_batch_size=2, rapo__max_completion_length=300)  # fmt: skip
    prompt = prompt_tokens(config)[1]
    capacity = math.ceil((prompt + 300 - 1) / 128) * 128  # the engine's kv_block
    stage = _stage(plan_memory(config, 2), "RAPO")
    per_token = 2.0 * arch.num_layers * arch.num_kv_heads * arch.head_dim * 2
    rollout = _items(stage, "rollout")
    assert rollout["KV cache"] == pytest.approx(16 * 2 / 2 * capacity * per_token, rel=1e-12)
    # held-out evaluation: transformers' generate, eval.batch_size images x eval.num_samples, unrounded
    rows = config.eval.batch_size * config.eval.num_samples
    assert _items(stage, "evaluation")["KV cache"] == pytest.approx(
        rows * (prompt + config.eval.max_completion_length) * per_token, rel=1e-12
    )
    logits = 2.0 * 300 * arch.vocab_size
    assert _items(stage, "training step")["logits (full vocabulary)"] == pytest.approx(
        logits * (2 + 8), rel=1e-12
    )
    assert _items(stage, "log-probs")["logits (full vocabulary)"] == pytest.approx(
        logits * (2 + 4), rel=1e-12
    )
    lora = _stage(plan_memory(_config(rapo__fused_linear=True, model__lora={"r": 8})), "RAPO")
    fused = _items(lora, "training step")
    assert "logits (full vocabulary)" not in fused and fused["fused-linear loss chunks"] < 1 * GiB


def test_stage_total_is_persistent_plus_its_largest_phase_plus_allowances():
    stage = _stage(plan_memory(_config(deepspeed="zero3"), 1), "RAPO")
    persistent = sum(i.nbytes for i in stage.persistent if i.counted)
    largest = max(sum(i.nbytes for i in items) for items in stage.phases.values())
    allocated = persistent + largest
    assert stage.total == pytest.approx(allocated * (1 + FRAGMENTATION) + CUDA_CONTEXT_BYTES, rel=1e-12)
    # ZeRO-3 on one GPU gathers a second full copy for generation: the rollout is the peak
    assert stage.peak_phase == "rollout"


def test_image_tokens_follow_the_processor():
    assert image_tokens(224, 224, (3136, 12845056)) == 64
    assert image_tokens(800, 600, (3136, 12845056)) == 29 * 21
    assert image_tokens(56, 56, (56 * 56, 112 * 112)) == 4
    assert image_tokens(4000, 4000, (3136, 28 * 28 * 100)) == 100  # capped at max_pixels


# ---------------------------------------------------------------------------------------------------
# Where the architecture comes from


def test_sizes_by_name_local_config_and_errors(tmp_path, tiny):
    assert known_size("Qwen/Qwen2.5-VL-7B-Instruct") == "7B"
    assert known_size("/models/qwen2.5-vl-72b-instruct") == "72B"
    assert known_size("/models/Qwen2-VL-7B") is None and known_size("/models/qwen2.5-vl-14b") is None
    with pytest.raises(ValueError, match="names no Qwen2.5-VL size"):
        architecture_for(config_from_dict({"model": {"name_or_path": "my-model"}}))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        architecture_for(config_from_dict({"model": {"name_or_path": str(tmp_path)}}))
    _, model = tiny
    (tmp_path / "config.json").write_text(model.config.to_json_string(), encoding="utf-8")
    read = architecture_for(config_from_dict({"model": {"name_or_path": str(tmp_path)}}))
    assert read.total_params() == sum(p.numel() for p in model.parameters())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}), encoding="utf-8")
    with pytest.raises(ValueError, match="Qwen2.5-VL's architecture only"):
        architecture_for(config_from_dict({"model": {"name_or_path": str(tmp_path)}}))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("24GB", 24 * 10**9), ("24GiB", 24 * 2**30), ("80G", 80 * 10**9), ("48 gb", 48 * 10**9),
     ("1.5TiB", int(1.5 * 2**40)), ("512MiB", 512 * 2**20)],
)  # fmt: skip
def test_gpu_memory_units(text, expected):
    assert parse_memory_size(text)[0] == expected


@pytest.mark.parametrize("text", ["24", "GB", "24 XB", "-8GB", "0GB", "twenty GB", ""])
def test_gpu_memory_parse_errors(text):
    with pytest.raises(ValueError, match="--gpu-memory"):
        parse_memory_size(text)


# ---------------------------------------------------------------------------------------------------
# Packaged one-GPU configs and the command line


@pytest.mark.parametrize(
    ("name", "memory"), [("qwen2_5_vl_7b_lora_24gb", "24GB"), ("qwen2_5_vl_7b_lora_48gb", "48GB")]
)
def test_packaged_one_gpu_configs_fit_with_margin(name, memory):
    config = load_config(name)
    assert (
        config.model.lora.r is not None and config.model.gradient_checkpointing and config.rapo.fused_linear
    )
    assert known_size(config.model.name_or_path) == "7B"
    real_data = config_from_dict({"data": {"spec": "ava:/data/AVA"}}, config)
    budget = parse_memory_size(memory)[0]
    plan = plan_memory(real_data, 1, gpu_memory=budget)
    assert len(plan.stages) == 2
    assert plan.peak <= 0.92 * budget  # 8% of the card left for what the estimate misses


def _train_main(argv, capsys):
    from aesr1.train.__main__ import main

    code = main(argv)
    return code, capsys.readouterr()


def test_plan_command_prints_both_stages_and_the_verdict(capsys):
    code, out = _train_main(["--plan", "--gpu-memory", "24GiB"], capsys)
    assert code == 0, out.err
    text = out.out
    assert "tiny Qwen2.5-VL" in text and "cold start (SFT)" in text and "RAPO" in text
    assert "24 GiB = 24 x 2^30 bytes" in text and "FITS" in text and "assumptions:" in text
    code, out = _train_main(["--plan", "--config", "qwen2_5_vl_7b_lora_48gb", "--gpu-memory", "8GB"], capsys)
    assert code == 0 and "DOES NOT FIT" in out.out and "Qwen2.5-VL-7B" in out.out


def test_plan_reads_the_launchers_world_size(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, out = _train_main(["--plan", "--config", "appendix_c_qwen2_5_vl_7b", "--model", "Qwen2.5-VL-3B",
                             "--deepspeed", "zero3"], capsys)  # fmt: skip
    assert code == 0, out.err
    assert "2 GPU(s), DeepSpeed zero3: ZeRO-3" in out.out
    code, out = _train_main(["--plan", "--config", "appendix_c_qwen2_5_vl_7b", "--model", "Qwen2.5-VL-3B",
                             "--num-gpus", "8"], capsys)  # fmt: skip
    assert code == 0 and "8 GPU(s)" in out.out


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--plan", "--gpu-memory", "24"], "expected a size with a unit"),
     (["--plan", "--gpu-memory", "lots"], "expected a size with a unit"),
     (["--gpu-memory", "24GB"], "go with --plan"),
     (["--plan", "--num-gpus", "0"], "--num-gpus must be >= 1"),
     (["--plan", "--num-gpus", "3"], "multiple of rapo.num_generations x processes")],
)  # fmt: skip
def test_plan_command_errors(argv, message, capsys):
    code, out = _train_main(argv, capsys)
    assert code == 2 and message in out.err


def test_aesr1_train_plan_runs_the_same_command(capsys):
    from aesr1.cli import main

    assert main(["train", "--plan", "--num-gpus", "1"]) == 0
    assert "cold start (SFT)" in capsys.readouterr().out
