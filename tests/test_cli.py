"""The `aesr1` command runs the tools, and the tools share one vocabulary of flags
(--output-dir, --model, --no-progress); the old spellings keep working and warn on stderr."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import aesr1
import aesr1.cli
from aesr1.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def exit_code(call) -> int:
    with pytest.raises(SystemExit) as exit_info:
        call()
    return exit_info.value.code


# ------------------------------------------------------------------------------ the dispatcher


def test_help_lists_every_command_with_its_summary(capsys):
    assert exit_code(lambda: main(["--help"])) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: aesr1 ")
    for name, command in COMMANDS.items():
        assert f"    {name}" in out and command.summary in out
    assert set(COMMANDS) == {"train", "eval", "score", "aescot", "serve", "study"}


def test_version(capsys):
    assert exit_code(lambda: main(["--version"])) == 0
    assert capsys.readouterr().out == f"aesr1 {aesr1.__version__}\n"


@pytest.mark.parametrize(
    ("argv", "message"), [([], "required: COMMAND"), (["frob"], "invalid choice: 'frob'")]
)
def test_a_missing_or_unknown_command_is_a_usage_error(capsys, argv, message):
    assert exit_code(lambda: main(argv)) == 2
    err = capsys.readouterr().err
    assert message in err and "usage: aesr1" in err


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["score", "--help"], "usage: aesr1 score "),
        (["eval", "--help"], "usage: aesr1 eval "),
        (["train", "--help"], "usage: aesr1 train "),
        (["aescot", "build", "--help"], "usage: aesr1 aescot build "),
        (["serve", "--help"], "usage: aesr1 serve "),
        (["study", "--help"], "usage: aesr1 study "),
    ],
)
def test_each_command_runs_under_its_aesr1_name(capsys, argv, usage):
    assert exit_code(lambda: main(argv)) == 0
    assert capsys.readouterr().out.startswith(usage)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_python_dash_m_keeps_its_own_name(capsys, name):
    module = importlib.import_module(COMMANDS[name].module)
    assert exit_code(lambda: module.main(["--help"])) == 0
    package = COMMANDS[name].module.removesuffix(".__main__")  # aesr1.<name>, or aesr1.train.study
    assert capsys.readouterr().out.startswith(f"usage: python -m {package} ")


def test_dispatch_passes_the_arguments_and_the_exit_status(capsys):
    assert main(["aescot", "check-leakage", "Overall, a fair picture.", "I rate it 0.4."]) == 1
    assert "arg1: LEAK" in capsys.readouterr().out


def test_a_command_without_the_train_extra_says_what_to_install(monkeypatch, capsys):
    def no_torch(name):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setattr(aesr1.cli.importlib, "import_module", no_torch)
    assert main(["train"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: aesr1 train needs the train extra") and "'torch'" in err
    assert "aesr1[train]" in err


def test_console_script_entry_resolves_to_the_dispatcher():
    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attribute = scripts["aesr1"].partition(":")
    assert getattr(importlib.import_module(module), attribute) is main


def test_help_as_the_console_script_runs_it_imports_no_torch():
    # What the installed `aesr1` script does, in a fresh interpreter.
    code = (
        "import sys\nfrom aesr1.cli import main\ntry:\n    sys.exit(main())\n"
        "finally:\n    assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    run = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "aescot" in run.stdout


# ------------------------------------------------------------------------ deprecated spellings


def warning_for(old: str, new: str) -> str:
    return f"warning: {old} is deprecated; use {new}"


@pytest.mark.parametrize(
    ("module", "required"),
    [("aesr1.score.__main__", ["photo.png", "--model", "m"]), ("aesr1.eval.__main__", [])],
)
def test_quiet_is_no_progress(capsys, module, required):
    build_parser = importlib.import_module(module).build_parser
    assert build_parser().parse_args(required).no_progress is False
    assert capsys.readouterr().err == ""
    assert build_parser().parse_args([*required, "--no-progress"]).no_progress is True
    assert capsys.readouterr().err == ""
    assert build_parser().parse_args([*required, "--quiet"]).no_progress is True
    assert capsys.readouterr().err == warning_for("--quiet", "--no-progress") + "\n"
    assert "--quiet" not in build_parser().format_help()


@pytest.fixture
def evaluation_config(monkeypatch, tmp_path):
    """Runs `aesr1.eval`'s main up to the evaluation and returns the config it would evaluate."""
    import aesr1.eval.runner

    seen = []

    def run_evaluation(config, progress):
        seen.append(config)
        raise ValueError("stopped before evaluating")

    monkeypatch.setattr(aesr1.eval.runner, "run_evaluation", run_evaluation)
    from aesr1.eval.__main__ import main as eval_main

    def config_for(*flags: str):
        assert eval_main(["--model", str(tmp_path / "model"), "--data", "csv:x.csv", *flags]) == 2
        return seen.pop()

    return config_for


def test_eval_output_is_output_dir(evaluation_config, tmp_path, capsys):
    assert evaluation_config("--output-dir", str(tmp_path / "new")).output_dir == str(tmp_path / "new")
    assert "deprecated" not in capsys.readouterr().err
    assert evaluation_config("--output", str(tmp_path / "old")).output_dir == str(tmp_path / "old")
    assert warning_for("--output", "--output-dir DIR") in capsys.readouterr().err
    assert evaluation_config().output_dir == str(Path("aesr1-eval") / "model")


def test_eval_compare_writes_comparison_md_in_output_dir(monkeypatch, tmp_path, capsys):
    import aesr1.eval.compare
    from aesr1.eval.__main__ import main as eval_main

    monkeypatch.setattr(aesr1.eval.compare, "compare_results", lambda paths: "| Model |")
    assert eval_main(["--compare", "a.json", "--output-dir", str(tmp_path / "runs")]) == 0
    assert (tmp_path / "runs" / "comparison.md").read_text() == "| Model |\n"
    assert capsys.readouterr().err == ""

    old = tmp_path / "table.md"  # the old flag names the table's file itself
    assert eval_main(["--compare", "a.json", "--output", str(old)]) == 0
    assert old.read_text() == "| Model |\n"
    assert warning_for("--output", "--output-dir DIR") in capsys.readouterr().err

    assert eval_main(["--compare", "a.json", "--output", str(old), "--output-dir", str(tmp_path)]) == 2
    assert "give --output-dir only" in capsys.readouterr().err


# ------------------------------------------------------------------------------- aesr1 aescot


@pytest.fixture
def tiny_data(tmp_path) -> str:
    return f"synthetic:{tmp_path / 'syn'}?n=6&image_size=16"


def aescot(*flags: str) -> int:
    from aesr1.aescot.__main__ import main as aescot_main

    return aescot_main(["build", "--no-progress", *flags])


def test_aescot_out_still_writes_the_named_file(tmp_path, tiny_data, capsys):
    out = tmp_path / "old.jsonl"
    assert aescot("--data", tiny_data, "--expert", "template", "--per-bin", "1", "--out", str(out)) == 0
    assert warning_for("--out", "--output-dir DIR (writes DIR/aescot.jsonl)") in capsys.readouterr().err
    assert out.read_text().count("\n") == 3 and (tmp_path / "old.report.json").is_file()
    assert aescot("--data", tiny_data, "--expert", "template", "--out", str(tmp_path / "x.csv")) == 2
    assert "--out must be a .jsonl file" in capsys.readouterr().err


def test_aescot_output_dir_is_required_and_exclusive_with_out(tmp_path, tiny_data, capsys):
    assert aescot("--data", tiny_data, "--expert", "template") == 2
    assert "give --output-dir DIR: the build writes DIR/aescot.jsonl" in capsys.readouterr().err
    flags = ("--out", str(tmp_path / "o.jsonl"), "--output-dir", str(tmp_path))
    assert aescot("--data", tiny_data, "--expert", "template", *flags) == 2
    assert "give --output-dir only" in capsys.readouterr().err


@pytest.mark.parametrize("expert", ["chat", "openai"])
def test_aescot_chat_with_model_asks_for_expert_model(tmp_path, capsys, expert):
    missing = tmp_path / "missing.csv"  # refused before any data is read
    assert (
        aescot("--data", str(missing), "--expert", expert, "--model", "gpt-4o", "--output-dir", str(tmp_path))
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith(f"error: --expert {expert}: the API model name is now --expert-model")
    assert "--expert-model gpt-4o" in err and "missing.csv" not in err


@pytest.fixture
def model_loads(monkeypatch):
    """The endpoints' model names and the local checkpoints a build asks for; stops at the first load."""
    import aesr1.aescot.__main__ as aescot_cli

    seen = {"endpoints": [], "checkpoints": []}
    real_client = aescot_cli.ChatClient

    def client(config):
        seen["endpoints"].append(config.model)
        return real_client(config)

    def from_pretrained(path, **kwargs):
        seen["checkpoints"].append(str(path))
        raise ValueError(f"stopped before loading {path}")

    monkeypatch.setattr(aescot_cli, "ChatClient", client)
    monkeypatch.setattr(aescot_cli.LocalModel, "from_pretrained", from_pretrained)
    return seen


def test_aescot_model_path_is_model(tmp_path, tiny_data, model_loads, capsys):
    out = ("--output-dir", str(tmp_path / "cot"))
    assert aescot("--data", tiny_data, "--expert", "transformers", "--model", "ckpt-new", *out) == 2
    assert model_loads["checkpoints"] == ["ckpt-new"] and "deprecated" not in capsys.readouterr().err
    assert aescot("--data", tiny_data, "--expert", "transformers", "--model-path", "ckpt-old", *out) == 2
    assert model_loads["checkpoints"][-1] == "ckpt-old"
    assert warning_for("--model-path", "--model") in capsys.readouterr().err
    flags = ("--model", "a", "--model-path", "b")
    assert aescot("--data", tiny_data, "--expert", "transformers", *flags, *out) == 2
    assert "give --model only" in capsys.readouterr().err
    assert aescot("--data", tiny_data, "--expert", "transformers", *out) == 2
    assert "--expert transformers needs --model" in capsys.readouterr().err


def test_aescot_chat_expert_with_a_local_judge(tmp_path, tiny_data, model_loads, capsys):
    chat = ("--expert", "chat", "--api-key-env", "", "--judge", "transformers", "--output-dir", str(tmp_path))
    assert aescot("--data", tiny_data, *chat, "--expert-model", "vlm", "--model", "ckpt") == 2
    assert model_loads == {"endpoints": ["vlm"], "checkpoints": ["ckpt"]}
    # The old command line (API model by default, the judge's checkpoint as --model-path) still runs.
    assert aescot("--data", tiny_data, *chat, "--model-path", "old-ckpt") == 2
    assert model_loads == {"endpoints": ["vlm", "gpt-4.1"], "checkpoints": ["ckpt", "old-ckpt"]}
    assert "stopped before loading old-ckpt" in capsys.readouterr().err


# ---------------------------------------------------------------------- aesr1 train --cold-start


def test_train_cold_start_takes_the_folder_aescot_build_writes(tmp_path, tiny_data):
    from aesr1.train.__main__ import build_config, cold_start_file, parse_args
    from aesr1.train.data import check_data_spec

    folder = tmp_path / "cot"
    assert (
        aescot("--data", tiny_data, "--expert", "template", "--per-bin", "1", "--output-dir", str(folder))
        == 0
    )
    records = folder / "aescot.jsonl"
    assert [json.loads(line)["bin"] for line in records.read_text().splitlines()]
    assert cold_start_file(str(folder)) == str(records)
    assert cold_start_file(str(records)) == str(records)
    config, _ = build_config(parse_args(["--data", "synthetic", "--cold-start", str(folder)]))
    assert config.data.cold_start == str(records)
    check_data_spec(config)


@pytest.mark.parametrize(
    ("kind", "message"), [("empty folder", "holds no aescot.jsonl"), ("missing", "no such file or folder")]
)
def test_train_cold_start_that_is_neither_file_nor_build_folder(tmp_path, capsys, kind, message):
    from aesr1.train.__main__ import main as train_main

    path = tmp_path / "cot"
    if kind == "empty folder":
        path.mkdir()
    assert train_main(["--data", "synthetic", "--cold-start", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --cold-start {str(path)!r}: ") and message in err
