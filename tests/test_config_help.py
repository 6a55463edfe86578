"""`--show-config`'s YAML (every key with its help) and the nearest keys of a misspelt one."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

import yaml

from aesr1.train.config import TrainConfig, embedded_default
from aesr1.train.config_help import attribute_help, describe_config, known_keys, nearest_keys


def test_every_setting_has_a_one_line_help():
    missing = []
    stack = [TrainConfig]
    while stack:
        cls = stack.pop()
        helps = attribute_help(cls)
        for name, kind in typing.get_type_hints(cls).items():
            if dataclasses.is_dataclass(kind):
                stack.append(kind)
            elif not helps.get(name):
                missing.append(f"{cls.__name__}.{name}")
    assert not missing, f"settings without a line in their section's Attributes: {missing}"


def test_the_yaml_loads_back_to_the_config_and_marks_changed_defaults():
    config = embedded_default()
    text = describe_config(config)
    assert yaml.safe_load(text) == dataclasses.asdict(config)
    lines = text.splitlines()
    assert lines[lines.index(next(line for line in lines if line.startswith("seed:")))] == (
        "seed: 0  # seeds data order, sampling and initialisation."
    )  # equal to its default: no default shown
    rapo = lines.index(next(line for line in lines if line.startswith("rapo:")))
    learning_rate = next(line for line in lines[rapo:] if line.startswith("  learning_rate:"))
    assert learning_rate.startswith(f"  learning_rate: {config.rapo.learning_rate}")
    assert learning_rate.endswith(f"(default: {yaml.safe_dump(TrainConfig().rapo.learning_rate).split()[0]})")


def test_attribute_help_reads_shared_and_wrapped_entries():
    @dataclass
    class Section:
        """A section.

        Attributes:
            alpha: first line
                continues here. Second sentence is dropped.
            beta / gamma: shared by two (e.g. both) keys.
        """

        alpha: int = 1
        beta: int = 2
        gamma: int = 3

    assert attribute_help(Section) == {
        "alpha": "first line continues here.",
        "beta": "shared by two (e.g. both) keys.",
        "gamma": "shared by two (e.g. both) keys.",
    }


def test_nearest_keys_of_typos_and_misplaced_keys():
    keys = known_keys(TrainConfig)
    assert "rapo.epsilon_high" in keys and "seed" in keys
    assert nearest_keys("rapo.epsilon_hihg", TrainConfig)[0] == "rapo.epsilon_high"
    assert "rapo.learning_rate" in nearest_keys("rapo.lerning_rate", TrainConfig)
    assert "rapo.epsilon" in nearest_keys("sft.epsilon", TrainConfig)  # right key, wrong section
    assert nearest_keys("zzzz.qqqq", TrainConfig) == []


def test_show_config_prints_the_resolved_config_and_runs_nothing(tmp_path, capsys):
    from aesr1.train.__main__ import build_config, main, parse_args

    args = [
        "--output-dir",
        str(tmp_path / "run"),
        "--set",
        "rapo.epsilon_high=0.3",
        "--report-to",
        "wandb,mlflow",
    ]
    assert main([*args, "--show-config"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    config, _ = build_config(parse_args(args))
    assert shown == dataclasses.asdict(config)
    assert shown["rapo"]["epsilon_high"] == 0.3 and shown["report_to"] == ["wandb", "mlflow"]
    assert not (tmp_path / "run").exists()


def test_a_misspelt_set_names_the_nearest_keys(capsys):
    from aesr1.train.__main__ import main

    assert main(["--set", "rapo.epsilon_hihg=0.3", "--show-config"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'rapo.epsilon_hihg'; did you mean rapo.epsilon_high" in err
