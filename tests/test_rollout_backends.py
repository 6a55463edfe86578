"""The rollout backend switch (engine | generate | vllm) and the rollout benchmark's CPU smoke run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aesr1.generation import SamplingConfig
from aesr1.modeling.tiny import build_tiny_model
from aesr1.rollout import RolloutConfig, generate_rollouts_hf, make_rollout_fn
from aesr1.rollout import backends as backends_module

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    model, processor = build_tiny_model(seed=1)
    model.eval()
    return model, processor


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    return [Image.fromarray((rng.random((60, 60, 3)) * 255).astype("uint8")) for _ in range(2)]


@pytest.mark.parametrize("backend", ["engine", "generate"])
def test_engine_and_generate_backends_return_rollouts_with_sampling_logprobs(tiny, images, backend):
    model, processor = tiny
    rollout_fn = make_rollout_fn(RolloutConfig(backend=backend))
    sampling = SamplingConfig(num_samples=2, temperature=0.9, max_new_tokens=6)
    rollout = rollout_fn(model, processor, images, sampling, seed=4)
    # on CPU both are `generate` (the engine backend falls back): the same seeded samples
    reference = generate_rollouts_hf(model, processor, images, sampling, seed=4)
    assert torch.equal(rollout.completion_ids, reference.completion_ids)
    logprobs = rollout.batch["sampling_logprobs"]
    assert logprobs.shape == rollout.completion_mask.shape and logprobs.dtype == torch.float32
    assert (logprobs[rollout.completion_mask.bool()] < 0).all()
    assert len(rollout.texts) == 4 and rollout.num_samples == 2


def test_vllm_is_imported_only_when_selected_and_missing_vllm_is_explained(monkeypatch):
    make_rollout_fn(RolloutConfig(backend="engine"))
    make_rollout_fn(RolloutConfig(backend="generate"))
    if importlib.util.find_spec("vllm") is None:
        assert "vllm" not in sys.modules
    monkeypatch.setattr(backends_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install 'trl\[vllm\]'"):
        make_rollout_fn(RolloutConfig(backend="vllm"))


def test_vllm_backend_names_what_it_needs(monkeypatch):
    monkeypatch.setattr(backends_module.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(ValueError, match="model, processor, accelerator, sampling"):
        make_rollout_fn(RolloutConfig(backend="vllm"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(backend="sglang"), "backend"),
        (dict(vllm_mode="remote"), "vllm_mode"),
        (dict(vllm_gpu_memory_utilization=0.0), "vllm_gpu_memory_utilization"),
        (dict(backend="vllm", vllm_mode="server"), "vllm_server_base_url"),
    ],
)
def test_rollout_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RolloutConfig(**kwargs)


def test_bench_smoke_runs_every_method_on_cpu(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_rollout", ROOT / "benches" / "bench_rollout.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_rollout", bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    report = bench.main(["--smoke", "--device", "cpu", "--greedy-check", "5", "--json", str(out)])
    assert [row["method"] for row in report["rows"]] == list(bench.METHODS)
    workload = report["workload"]
    for row in report["rows"]:
        # no EOS can occur: every method produces rows x new_tokens tokens
        assert row["new_tokens"] == workload["rows"] * workload["new_tokens"]
        assert row["tokens_per_s"] > 0
    # fp32 on CPU: the engine's greedy tokens are generate's exactly
    assert report["greedy_check"]["identical_rows"] == report["greedy_check"]["rows"]
    assert out.exists()


def test_the_trl_names_aesr1_imports_exist_in_the_installed_trl():
    """aesr1 imports these lazily (vLLM rollouts, ZeRO-3/FSDP reference, generation unwrap, SFT):
    a trl release that moves one fails here instead of in the middle of a run."""
    from trl import SFTConfig, SFTTrainer  # noqa: F401
    from trl.generation.vllm_generation import VLLMGeneration  # noqa: F401
    from trl.models import unwrap_model_for_generation  # noqa: F401
    from trl.models.utils import prepare_deepspeed, prepare_fsdp  # noqa: F401
