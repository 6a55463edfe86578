"""Every training setting is checked before heavy work starts, with an error naming its key; YAML
mistakes in files and `--set` end in one `error:` line, not a parser traceback."""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import pytest

from aesr1.train.__main__ import main
from aesr1.train.config import (
    NUMERIC_RANGES,
    TrainConfig,
    config_from_dict,
    embedded_default,
    numeric_settings,
)


def nested(key: str, value) -> dict:
    """{"a": {"b": value}} for "a.b", at any depth."""
    out = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def test_every_numeric_setting_has_a_range():
    assert set(numeric_settings(TrainConfig())) == set(NUMERIC_RANGES)


def float_settings() -> list[str]:
    config = TrainConfig()
    keys = []
    for key in NUMERIC_RANGES:
        *sections, name = key.split(".")
        owner = functools.reduce(getattr, sections, config)
        field = next(f for f in dataclasses.fields(owner) if f.name == name)
        if "float" in str(field.type):
            keys.append(key)
    return keys


@pytest.mark.parametrize("key", float_settings())
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_rejected_by_key(key, value):
    with pytest.raises(ValueError, match=rf"^{re.escape(key)} must be a finite number"):
        config_from_dict(nested(key, value))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("sft.max_completion_length", 0),
        ("sft.max_steps", 0),
        ("sft.max_grad_norm", 0.0),
        ("sft.warmup_ratio", 1.5),
        ("data.synthetic_n", 0),
        ("data.synthetic_n", -5),
        ("data.synthetic_image_size", 0),
        ("data.cold_start_per_bin", -1),
        ("data.max_eval_images", 1),
        ("rapo.max_grad_norm", 0.0),
        ("rapo.top_k", -1),
        ("rapo.warmup_steps", -1),
        ("reward.rank", -1.0),
        ("model.tiny_layers", 0),
        ("save_total_limit", 0),
        ("seed", -1),
        ("eval.max_completion_length", 0),
        ("rapo.rollout.vllm_gpu_memory_utilization", 1.5),
        ("rapo.rollout.engine.kv_block", 0),
    ],
)
def test_out_of_range_numbers_are_rejected_by_key(key, value):
    with pytest.raises(ValueError, match=rf"^{re.escape(key)} must (be|lie in) .*got {value!r}"):
        config_from_dict(nested(key, value))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("model.dtype", "float33"),
        ("model.tiny_hidden_size", 40),
        ("sft.lr_scheduler_type", "cosin"),
        ("rapo.lr_scheduler_type", "linaer"),
    ],
)
def test_bad_choices_are_rejected_by_key(key, value):
    with pytest.raises(ValueError, match=re.escape(key)):
        config_from_dict(nested(key, value))


def test_shipped_defaults_pass():
    config_from_dict({}, embedded_default())
    config_from_dict({})


def _cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_cli_names_the_bad_setting(capsys):
    err = _cli_error(capsys, ["--set", "rapo.learning_rate=.nan"])
    assert err == "error: rapo.learning_rate must be a finite number (>= 0), got nan"
    err = _cli_error(capsys, ["--set", "sft.max_completion_length=0"])
    assert err == "error: sft.max_completion_length must be >= 1, got 0"


def test_malformed_set_values_and_keys(capsys):
    err = _cli_error(capsys, ["--set", "rapo.beta=[1,"])
    assert err.startswith("error: --set 'rapo.beta=[1,': the value is not valid YAML")
    err = _cli_error(capsys, ["--set", "rapo=1", "--set", "rapo.beta=2"])
    assert "--set 'rapo.beta=2'" in err and "'rapo' was set to a value (1)" in err
    err = _cli_error(capsys, ["--set", "rapo..beta=2"])
    assert "--set 'rapo..beta=2'" in err


def test_malformed_yaml_files(tmp_path, capsys):
    tabs = tmp_path / "tabs.yaml"
    tabs.write_text("rapo:\n\tbeta: 0.02\n")
    err = _cli_error(capsys, ["--config", str(tabs)])
    assert f"config file {str(tabs)!r} is not valid YAML" in err and "line 2" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("rapo: {beta: [0.1\n")
    err = _cli_error(capsys, ["--config", str(broken)])
    assert str(broken) in err and "not valid YAML" in err


def _count_data_checks(monkeypatch) -> list:
    """Calls of `check_data_spec`, a check only `preflight` runs."""
    import aesr1.train.data as data

    calls = []
    original = data.check_data_spec
    monkeypatch.setattr(data, "check_data_spec", lambda config: calls.append(config) or original(config))
    return calls


def test_preflight_runs_once_per_configuration(monkeypatch):
    from aesr1.train.pipeline import preflight

    calls = _count_data_checks(monkeypatch)
    config = config_from_dict({"sft": {"per_device_train_batch_size": 16}}, embedded_default())
    preflight(config)
    preflight(config)
    assert len(calls) == 1
    preflight(config_from_dict({"seed": 1}, config))  # another configuration: checked
    preflight(config, world_size=2)  # another process count: checked
    assert len(calls) == 3
    bad = config_from_dict({"data": {"spec": "ava:/nonexistent/AVA"}}, config)
    for _ in range(2):  # a failure is not remembered
        with pytest.raises(FileNotFoundError, match="AVA"):
            preflight(bad)


def test_a_cli_run_runs_preflight_once(tmp_path, monkeypatch):
    """`python -m aesr1.train` runs preflight before `run_pipeline`, which does not run it again."""
    import aesr1.train.data as data

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    import aesr1.train.config as config_module

    calls = _count_data_checks(monkeypatch)
    validations = []
    original = config_module.validate_config
    monkeypatch.setattr(
        config_module, "validate_config", lambda *a, **k: validations.append(a) or original(*a, **k)
    )
    monkeypatch.setattr(data, "load_items", stop)  # the first heavy step of run_pipeline
    with pytest.raises(Stop):
        main(["--output-dir", str(tmp_path / "run"), "--no-progress", "--set", "seed=12345",
              "--config", "table2_abs", "--set", "rapo.learning_rate=2e-6"])  # fmt: skip
    assert len(calls) == 1
    assert len(validations) == 1  # not after the YAML, again after the flags, and in preflight
