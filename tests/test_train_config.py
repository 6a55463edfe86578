"""Training configuration: Appendix C defaults, strict YAML, Table 2/3 configs, bad-input errors."""

from __future__ import annotations

import json

import pytest

from aesr1.train.__main__ import main
from aesr1.train.config import (
    CONFIG_DIR,
    TrainConfig,
    config_from_dict,
    embedded_default,
    load_config,
    validate_world_size,
)


def test_defaults_follow_appendix_c():
    c = TrainConfig()
    assert (c.sft.epochs, c.sft.learning_rate, c.sft.global_batch_size) == (1.0, 1e-5, 64)
    r = c.rapo
    assert (r.num_generations, r.learning_rate, r.lr_scheduler, r.mini_batch_size, r.epochs) == (
        4, 1e-6, "linear", 32, 10.0
    )  # fmt: skip
    assert (r.max_completion_length, r.eps_low, r.eps_high, r.beta) == (1024, 0.2, 0.28, 0.01)
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
    assert c.sft.epochs == 0  # Table 2 trains RL straight from the backbone
    assert c.rapo.learning_rate == 1e-6  # inherited from Appendix C


@pytest.mark.parametrize("epochs", [0, 1, 2, 10])
def test_table3_configs_set_sft_epochs(epochs):
    c = load_config(f"table3_sft{epochs}")
    assert c.sft.epochs == epochs
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
    assert c.rapo.learning_rate == 3e-6 and c.reward.abs == 0.0 and c.sft.epochs == 0
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
