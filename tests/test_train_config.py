"""Training configuration: Appendix C defaults, strict YAML, Table 2/3 configs, bad-input errors,
trl's names with the previous release's keys still read, one definition per class name."""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
import warnings

import pytest

import aesr1
from aesr1.loss import RapoLossConfig
from aesr1.rollout import RolloutConfig
from aesr1.train.__main__ import build_config, main, parse_args
from aesr1.train.config import (
    CONFIG_DIR,
    DEPRECATED_KEYS,
    RAPOConfig,
    TrainConfig,
    config_from_dict,
    embedded_default,
    load_config,
    validate_world_size,
)
from aesr1.train.pipeline import config_differences, saved_run_config


def test_defaults_follow_appendix_c():
    c = TrainConfig()
    assert (c.sft.num_train_epochs, c.sft.learning_rate, c.sft.global_batch_size) == (1.0, 1e-5, 64)
    r = c.rapo
    assert (r.num_generations, r.learning_rate, r.lr_scheduler_type, r.mini_batch_size, r.num_train_epochs) == (
        4, 1e-6, "linear", 32, 10.0
    )  # fmt: skip
    assert (r.max_completion_length, r.epsilon, r.epsilon_high, r.beta) == (1024, 0.2, 0.28, 0.01)
    assert (c.reward.rank, c.reward.abs, c.reward.binary, c.reward.sigma) == (1.0, 1.0, 0.0, 0.1)
    assert c.reward.rank_scope == "global"


def test_appendix_c_yaml_matches_defaults():
    c = load_config("appendix_c_qwen2_5_vl_7b")
    default = TrainConfig()
    assert c.rapo.learning_rate == default.rapo.learning_rate == 1e-6
    assert c.sft.learning_rate == 1e-5 and c.sft.global_batch_size == 64
    assert c.model.dtype == "bfloat16" and c.model.gradient_checkpointing


TABLE2 = {
    "table2_binary": (0.0, 0.0, 1.0),
    "table2_abs": (0.0, 1.0, 0.0),
    "table2_rank": (1.0, 0.0, 0.0),
    "table2_binary_rank": (1.0, 0.0, 1.0),
    "table2_abs_rank": (1.0, 1.0, 0.0),
}


@pytest.mark.parametrize("name", sorted(TABLE2))
def test_table2_configs_set_reward_weights(name):
    c = load_config(name)
    assert (c.reward.rank, c.reward.abs, c.reward.binary) == TABLE2[name]
    assert c.sft.num_train_epochs == 0  # Table 2 trains RL straight from the backbone
    assert c.rapo.learning_rate == 1e-6  # inherited from Appendix C


@pytest.mark.parametrize("epochs", [0, 1, 2, 10])
def test_table3_configs_set_sft_epochs(epochs):
    c = load_config(f"table3_sft{epochs}")
    assert c.sft.num_train_epochs == epochs
    assert c.reward.rank == 1.0 and c.reward.abs == 1.0


def test_every_shipped_config_loads():
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert len(names) >= 10
    for name in names:
        load_config(name)


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("rapo:\n  num_generation: 8\n")
    with pytest.raises(ValueError, match="rapo.num_generation"):
        load_config(path)
    path.write_text("colour: blue\n")
    with pytest.raises(ValueError, match="'colour'"):
        load_config(path)


def test_wrong_types_and_values(tmp_path):
    with pytest.raises(TypeError, match="rapo.num_generations"):
        config_from_dict({"rapo": {"num_generations": "four"}})
    with pytest.raises(ValueError, match="rank_scope"):
        config_from_dict({"reward": {"rank_scope": "everywhere"}})
    # YAML reads 1e-5 without a dot as a string; it is still a number.
    path = tmp_path / "lr.yaml"
    path.write_text("sft:\n  learning_rate: 1e-5\n")
    assert load_config(path).sft.learning_rate == 1e-5


def test_batch_not_divisible_by_k():
    with pytest.raises(ValueError, match="mini_batch_size .*num_generations"):
        config_from_dict({"rapo": {"mini_batch_size": 30, "num_generations": 4}})
    config = config_from_dict({"rapo": {"mini_batch_size": 8, "num_generations": 4}})
    validate_world_size(config, 2)
    with pytest.raises(ValueError, match="whole groups"):
        validate_world_size(config, 4)


def test_base_chain_and_overrides(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("base: table2_rank\nrapo:\n  learning_rate: 3.0e-6\n")
    c = load_config(child)
    assert c.rapo.learning_rate == 3e-6 and c.reward.abs == 0.0 and c.sft.num_train_epochs == 0
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(ValueError, match="loops"):
        load_config(loop)


def test_embedded_default_is_valid_and_small():
    c = embedded_default()
    assert c.model.name_or_path is None and c.data.spec == "synthetic"
    assert c.rapo.mini_batch_size % c.rapo.num_generations == 0
    assert c.rapo.max_completion_length <= 128


def _cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_cli_bad_input_fails_fast(tmp_path, capsys):
    err = _cli_error(capsys, ["--model", str(tmp_path / "nope"), "--data", "synthetic"])
    assert "--model" in err and "nope" in err
    text_model = tmp_path / "text-only"
    text_model.mkdir()
    (text_model / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 8}))
    err = _cli_error(capsys, ["--model", str(text_model), "--data", "synthetic"])
    assert "vision" in err
    err = _cli_error(capsys, ["--data", f"ava:{tmp_path / 'no-ava'}"])
    assert "ava" in err and "does not exist" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("rapo:\n  mini_batch_size: 6\n")
    err = _cli_error(capsys, ["--config", str(bad)])
    assert "mini_batch_size" in err
    err = _cli_error(capsys, ["--set", "rapo.nonsense=1"])
    assert "rapo.nonsense" in err
    err = _cli_error(capsys, ["--data", "synthetic", "--cold-start", str(tmp_path / "none.jsonl")])
    assert "none.jsonl" in err


# ---------------------------------------------------------------------------------------------------
# trl's names; the previous release's keys (`DEPRECATED_KEYS`)

#: A valid value other than the default for every renamed setting.
RENAMED_VALUES = {
    "save_steps": 7,
    "logging_steps": 3,
    "sft.num_train_epochs": 2.0,
    "sft.per_device_train_batch_size": 4,
    "sft.lr_scheduler_type": "linear",
    "rapo.num_train_epochs": 3.0,
    "rapo.per_device_train_batch_size": 2,
    "rapo.lr_scheduler_type": "cosine",
    "rapo.epsilon": 0.1,
    "rapo.epsilon_high": 0.35,
    "rapo.rollout.backend": "generate",
    "rapo.rollout.engine.cuda_graphs": False,
    "rapo.rollout.vllm_mode": "server",
    "rapo.rollout.vllm_gpu_memory_utilization": 0.5,
    "rapo.rollout.vllm_server_base_url": "http://localhost:8000",
    "eval.eval_steps": 5,
}


def nested(key: str, value) -> dict:
    out = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def setting(config, key: str):
    return functools.reduce(getattr, key.split("."), config)


def test_renamed_values_cover_every_renamed_key():
    assert set(RENAMED_VALUES) == set(DEPRECATED_KEYS.values())
    for key, value in RENAMED_VALUES.items():
        assert setting(TrainConfig(), key) != value, key


@pytest.mark.parametrize(("old", "new"), sorted(DEPRECATED_KEYS.items()))
def test_old_key_loads_with_a_warning_as_the_new_one(old, new):
    value = RENAMED_VALUES[new]
    with pytest.warns(FutureWarning, match=rf"'{old}' is deprecated and read as '{new}'"):
        through_old = config_from_dict(nested(old, value))
    assert setting(through_old, new) == value
    assert through_old == config_from_dict(nested(new, value))


def test_old_and_new_key_together_are_refused():
    with pytest.raises(ValueError, match="'rapo.eps_high' and 'rapo.epsilon_high' are the same setting"):
        config_from_dict({"rapo": {"eps_high": 0.3, "epsilon_high": 0.3}})


def test_old_keys_in_yaml_and_set_load_with_warnings(tmp_path):
    child = tmp_path / "old.yaml"
    # the file's old key wins over the new key of its (packaged) base, as a key of the file always does
    child.write_text("base: appendix_c_qwen2_5_vl_7b\nrapo:\n  eps_high: 0.3\n  rollout_backend: generate\n")
    with pytest.warns(FutureWarning, match=str(child)):
        config = load_config(child)
    assert (config.rapo.epsilon_high, config.rapo.rollout.backend) == (0.3, "generate")
    with pytest.warns(FutureWarning) as caught:
        config, _ = build_config(parse_args(["--set", "rapo.eps_low=0.15", "--set", "sft.epochs=2"]))
    assert (config.rapo.epsilon, config.sft.num_train_epochs) == (0.15, 2.0)
    assert {str(w.message).split("'")[1] for w in caught} == {"rapo.eps_low", "sft.epochs"}


def previous_release_layout(values: dict) -> dict:
    """A `config.json` as the previous release wrote it: its key names, the rollout settings flat
    in `rapo`, and none of the settings added since (the other engine options, vllm_kwargs)."""
    out = copy.deepcopy(values)
    for old, new in DEPRECATED_KEYS.items():
        *new_path, new_name = new.split(".")
        *old_path, old_name = old.split(".")
        value = functools.reduce(dict.__getitem__, new_path, out).pop(new_name)
        functools.reduce(dict.__getitem__, old_path, out)[old_name] = value
    del out["rapo"]["rollout"]
    return out


def test_run_saved_by_the_previous_release_resumes(tmp_path):
    config = config_from_dict(
        {"output_dir": str(tmp_path), "rapo": {"epsilon_high": 0.3}}, embedded_default()
    )
    saved = previous_release_layout(json.loads(json.dumps(config.to_dict())))
    assert "eps_high" in saved["rapo"] and "rollout" not in saved["rapo"]
    assert config_differences(saved, config) == []
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # read silently: the user did not write those keys
        assert saved_run_config(config) == config
    changed = config_from_dict({"rapo": {"epsilon_high": 0.2}}, config)
    assert config_differences(saved, changed) == ["rapo.epsilon_high: 0.3 -> 0.2"]


def test_renamed_classes_still_import_with_a_warning():
    import aesr1.train
    from aesr1.train import config as module

    for old, new in module.RENAMED_CLASSES.items():
        with pytest.warns(DeprecationWarning, match=f"{old} is deprecated: use {new}"):
            assert getattr(module, old) is getattr(module, new)
        with pytest.warns(DeprecationWarning):
            assert getattr(aesr1.train, old) is getattr(module, new)


def test_no_two_aesr1_classes_share_a_name():
    """One name, one class across aesr1's modules (e.g. the training and the standalone evaluation
    configs are `HeldOutEvalConfig` and `aesr1.eval.EvalConfig`)."""
    defined = collections.defaultdict(set)
    for info in pkgutil.walk_packages(aesr1.__path__, "aesr1."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional dependency (vLLM, DeepSpeed, ...) is missing
            continue
        for obj in vars(module).values():
            if inspect.isclass(obj) and obj.__module__ == module.__name__:
                defined[obj.__qualname__].add(module.__name__)
    assert len(defined) > 50
    assert {name: sorted(where) for name, where in defined.items() if len(where) > 1} == {}


def test_our_class_names_differ_from_trls():
    import trl

    ours = {"SFTStageConfig", "RewardMixConfig", "HeldOutEvalConfig", "RAPOConfig", "TrainConfig"}
    assert not ours & set(dir(trl))


# ---------------------------------------------------------------------------------------------------
# One source of truth for the loss settings


def test_rapo_loss_defaults_come_from_the_loss_config():
    rapo, loss = RAPOConfig(), RapoLossConfig()
    assert (rapo.epsilon, rapo.epsilon_high) == (loss.eps_low, loss.eps_high)
    for name in ("beta", "temperature", "aggregation", "kl_clamp"):
        assert getattr(rapo, name) == getattr(loss, name), name
    assert rapo.loss_backend == loss.backend


def test_loss_config_carries_every_loss_setting_of_rapo():
    """Each field of the loss config follows its RAPO setting: changing any one changes it."""
    sources = {"eps_low": "epsilon", "eps_high": "epsilon_high", "backend": "loss_backend"}
    changed = {"epsilon": 0.1, "epsilon_high": 0.5, "beta": 0.2, "temperature": 0.7,
               "aggregation": "token-mean", "kl_clamp": True, "max_completion_length": 99,
               "loss_backend": "torch"}  # fmt: skip
    fields = [f.name for f in dataclasses.fields(RapoLossConfig)]
    assert {sources.get(name, name) for name in fields} == set(changed)
    base = RAPOConfig().loss_config()
    for name in fields:
        source = sources.get(name, name)
        loss = dataclasses.replace(RAPOConfig(), **{source: changed[source]}).loss_config()
        assert getattr(loss, name) == changed[source], name
        assert dataclasses.replace(loss, **{name: getattr(base, name)}) == base, name


def test_the_config_imports_without_torch():
    """The loss defaults and the rollout section come from torch-free modules (`aesr1.loss_config`,
    `aesr1.rollout.config`), so reading a config loads no torch."""
    code = "import sys, aesr1.train.config; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_rollout_section_is_the_rollout_packages_config():
    config = config_from_dict({"rapo": {"rollout": {"backend": "vllm", "vllm_mode": "server",
                                                    "vllm_server_base_url": "http://h:8000",
                                                    "engine": {"kv_block": 64}}}})  # fmt: skip
    assert isinstance(config.rapo.rollout, RolloutConfig)
    assert config.rapo.rollout.engine.kv_block == 64 and config.rapo.rollout.engine.cuda_graphs
    with pytest.raises(ValueError, match=r"^rapo\.rollout: backend 'vllm' with vllm_mode 'server' needs"):
        config_from_dict({"rapo": {"rollout": {"backend": "vllm", "vllm_mode": "server"}}})
    with pytest.raises(ValueError, match=r"'rapo\.rollout\.backend': expected one of"):
        config_from_dict({"rapo": {"rollout": {"backend": "sglang"}}})
    with pytest.raises(ValueError, match=r"unknown config key 'rapo\.rollout\.engine\.kv_blocks'"):
        config_from_dict({"rapo": {"rollout": {"engine": {"kv_blocks": 64}}}})
