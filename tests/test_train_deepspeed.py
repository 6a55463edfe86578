"""DeepSpeed for both stages: config filling, and a RAPO step under ZeRO-3 in two CPU processes
(gloo) that equals the same step recomputed without DeepSpeed."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aesr1.train.config import config_from_dict
from aesr1.train.distributed import (
    deepspeed_config,
    packaged_deepspeed_configs,
    rapo_accumulation_steps,
    read_deepspeed_config,
    resolve_deepspeed_config,
    zero_stage,
)

WORKER = Path(__file__).parent / "workers" / "zero3_rapo_step.py"


def test_packaged_configs_resolve_and_parse():
    assert {"zero2", "zero3", "zero3_offload"} <= set(packaged_deepspeed_configs())
    assert zero_stage(read_deepspeed_config("zero3")) == 3
    assert zero_stage(read_deepspeed_config("zero2")) == 2
    offload = read_deepspeed_config("zero3_offload")["zero_optimization"]
    assert offload["offload_optimizer"]["device"] == "cpu" and offload["offload_param"]["device"] == "cpu"
    with pytest.raises(FileNotFoundError, match="zero3_offload"):
        resolve_deepspeed_config("zero4")


def test_auto_values_are_filled_from_the_stage():
    filled = deepspeed_config(
        read_deepspeed_config("zero3"), micro_batch_size=4, accumulation_steps=3, world_size=8,
        max_grad_norm=0.5, bf16=True, hidden_size=16,
    )  # fmt: skip
    assert filled["train_micro_batch_size_per_gpu"] == 4
    assert filled["gradient_accumulation_steps"] == 3
    assert filled["train_batch_size"] == 4 * 3 * 8
    assert filled["gradient_clipping"] == 0.5 and filled["bf16"]["enabled"] is True
    zero = filled["zero_optimization"]
    assert zero["reduce_bucket_size"] == 256 and zero["stage3_param_persistence_threshold"] == 160
    assert "auto" not in json.dumps(filled)
    assert read_deepspeed_config("zero3")["train_micro_batch_size_per_gpu"] == "auto"  # input untouched


def test_explicit_values_that_contradict_the_training_config_are_refused():
    values = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 16}
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu = 16"):
        deepspeed_config(values, micro_batch_size=4, accumulation_steps=1, world_size=1, max_grad_norm=1.0,
                         bf16=False)  # fmt: skip
    with pytest.raises(ValueError, match="optimizer"):
        deepspeed_config({"optimizer": {"type": "AdamW"}}, micro_batch_size=1, accumulation_steps=1,
                         world_size=1, max_grad_norm=1.0, bf16=False)  # fmt: skip


def test_rapo_accumulation_counts_micro_batches_per_process():
    config = config_from_dict(
        {"rapo": {"mini_batch_size": 32, "per_device_train_batch_size": 8, "num_generations": 4}}
    )
    assert rapo_accumulation_steps(config, 1) == 4
    assert rapo_accumulation_steps(config, 2) == 2
    assert rapo_accumulation_steps(config, 8) == 1
    uneven = config_from_dict(
        {"rapo": {"mini_batch_size": 24, "per_device_train_batch_size": 8, "num_generations": 4}}
    )
    assert rapo_accumulation_steps(uneven, 1) == 3


def test_cli_and_preflight_name_a_bad_deepspeed_config(tmp_path):
    from aesr1.train.__main__ import build_config, parse_args
    from aesr1.train.pipeline import preflight

    args = parse_args(["--deepspeed", "zero3", "--local_rank=3", "--data", "synthetic"])
    config, _ = build_config(args)
    assert config.deepspeed == "zero3"
    bad = config_from_dict({"deepspeed": str(tmp_path / "missing.json")})
    with pytest.raises(FileNotFoundError, match="missing.json"):
        preflight(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        preflight(config_from_dict({"deepspeed": str(broken)}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reference_step(initial, data, processor, items, out_dir, fused, monkeypatch, lora=False):
    """The worker's optimiser step for one rank's round, without DeepSpeed: the parameter delta."""
    sys.path.insert(0, str(WORKER.parent))
    try:
        from zero3_rapo_step import PlainSGD, lora_model, rapo_values
    finally:
        sys.path.pop(0)
    from aesr1.modeling.tiny import build_tiny_model
    from aesr1.train.rapo import RAPOTrainer, Round

    monkeypatch.setattr(torch.optim, "AdamW", PlainSGD)
    model, _ = build_tiny_model(seed=0)
    model = lora_model(model) if lora else model
    model.load_state_dict(initial)
    config = config_from_dict(rapo_values(str(out_dir), fused))
    reference = None if lora else copy.deepcopy(model)
    trainer = RAPOTrainer(config, model, processor, items, ref_model=reference, output_dir=out_dir)
    assert not trainer.deepspeed
    rnd = Round(data["batch"], [], data["advantages"], data["old_logp"], data["ref_logp"], {})
    metrics = trainer.optimiser_step(rnd, data["rows"])
    return {k: v.detach() - initial[k] for k, v in model.state_dict().items()}, metrics


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is an optional extra")
@pytest.mark.parametrize(
    ("fused", "lora"), [(True, False), (False, False), (True, True)], ids=["fused-linear", "logits", "lora"]
)
def test_zero3_rapo_step_in_two_processes_equals_the_step_without_deepspeed(
    tmp_path, fused, lora, monkeypatch
):
    """With `lora`, the policy is a PeftModel: only its adapter moves, and its reference log-probs
    come from the same partitioned weights with the adapter disabled."""
    ds_json = tmp_path / "zero3.json"
    values = read_deepspeed_config("zero3")
    # SGD (see the worker) is not among ZeRO's tested optimisers; persistence 0 partitions every
    # parameter, lm_head included, so the fused path must gather it.
    values["zero_allow_untested_optimizer"] = True
    values["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    ds_json.write_text(json.dumps(values))
    out = tmp_path / "run"
    out.mkdir()
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TRITON_INTERPRET="0",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(_free_port()), str(WORKER), str(out), str(ds_json), "1" if fused else "0",
               *(["lora"] if lora else [])]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]

    from aesr1.data.synthetic import make_synthetic_dataset
    from aesr1.modeling.tiny import build_tiny_model

    initial = torch.load(out / "initial.pt")
    after = torch.load(out / "after.pt")
    _, processor = build_tiny_model(seed=0)
    items = make_synthetic_dataset(out / "syn", n=8, seed=0, image_size=32)
    deltas, rounds = [], []
    for rank in range(2):
        data = torch.load(out / f"round{rank}.pt", weights_only=False)
        rounds.append(data)
        delta, metrics = _reference_step(
            initial, data, processor, items, tmp_path / f"ref{rank}", fused, monkeypatch, lora
        )
        deltas.append(delta)
    # Each rank rolled out its own images (whole groups), with its own ref log-probs.
    assert not torch.equal(rounds[0]["batch"]["pixel_values"], rounds[1]["batch"]["pixel_values"])
    assert all(r["ref_logp"].abs().sum() > 0 for r in rounds)
    changed = 0
    for name, value in after.items():
        expected = initial[name] + (deltas[0][name] + deltas[1][name]) / 2  # DeepSpeed averages ranks
        torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-6, msg=name)
        changed += int(not torch.equal(value, initial[name]))
        if lora:  # the adapter alone trains
            assert ("lora_" in name) or torch.equal(value, initial[name]), name
    trainable = [name for name in after if "lora_" in name] if lora else list(after)
    assert changed > 0.5 * len(trainable)
    head = next(name for name in after if name.endswith("lm_head.weight"))
    assert torch.equal(after[head], initial[head]) == lora


def test_single_process_without_a_launcher_gets_rendezvous_variables():
    from unittest import mock

    from aesr1.train.distributed import ensure_process_group_env

    names = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    # patch.dict restores the environment on exit, removing the variables the call adds (left
    # behind, they would make every later test's accelerate state distributed).
    with mock.patch.dict(os.environ):
        for name in names:
            os.environ.pop(name, None)
        ensure_process_group_env()
        assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_ADDR"]) == (
            "0",
            "1",
            "127.0.0.1",
        )
        assert 0 < int(os.environ["MASTER_PORT"]) < 65536
        os.environ.update(RANK="3", MASTER_PORT="1234")
        ensure_process_group_env()  # a launcher's values stay
        assert os.environ["RANK"] == "3" and os.environ["MASTER_PORT"] == "1234"
