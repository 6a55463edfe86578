"""`report_to`: W&B (offline) and MLflow (local file store) for real, read back from their files."""

from __future__ import annotations

import json
import time

import pytest

from aesr1.train.trackers import REPORT_TO_CHOICES, Trackers, check_trackers_installed, parse_report_to
from aesr1.train.tracking import MetricsLogger

CONFIG = {"seed": 3, "rapo": {"epsilon_high": 0.28, "num_generations": 4}, "report_to": ["wandb", "mlflow"]}
ROWS = {"sft": {"plcc": 0.76, "srcc": 0.73, "parse_failure_rate": 0.145},
        "rapo": {"plcc": 0.82, "srcc": 0.76, "parse_failure_rate": 0.051}}  # fmt: skip


def test_report_to_takes_trl_spellings():
    assert parse_report_to("none") == [] and parse_report_to([]) == [] and parse_report_to(None) == []
    assert parse_report_to("wandb") == ["wandb"]
    assert parse_report_to("tensorboard, mlflow") == ["tensorboard", "mlflow"]
    assert parse_report_to(["mlflow", "mlflow"]) == ["mlflow"]
    assert set(parse_report_to("all")) <= set(REPORT_TO_CHOICES) and "tensorboard" in parse_report_to("all")
    with pytest.raises(ValueError, match="report_to: unknown value 'wandbb'"):
        parse_report_to("wandbb")
    with pytest.raises(ValueError, match="stand alone"):
        parse_report_to(["none", "wandb"])


def test_a_missing_service_is_named_with_its_install_line(monkeypatch):
    import aesr1.train.trackers as trackers

    monkeypatch.setattr(trackers, "_installed", lambda name: False)
    with pytest.raises(
        ValueError, match=r"report_to wandb: the 'wandb' package is not installed \(pip install"
    ):
        check_trackers_installed(["tensorboard", "wandb"])


def _log_two_stages(tmp_path, trackers):
    trackers.start(CONFIG)
    for stage, steps in (("sft", 3), ("rapo", 2)):
        logger = MetricsLogger(tmp_path, stage, tensorboard=False, trackers=trackers)
        for step in range(1, steps + 1):
            logger.log(step, {"loss": 1.0 / step, "reward/rank": 0.1 * step})
        logger.close()
    trackers.log_results(ROWS, "| model | PLCC |")
    trackers.finish()


def wandb_records(path):
    """The records of an offline W&B run file: a 7-byte header, then LevelDB-style log blocks of
    32 KiB whose records (CRC, length, type: full/first/middle/last) carry protobuf `Record`s."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if len(data) < 7:  # still being written
        return
    assert struct.unpack("<4sHB", data[:7])[0] == b":W&B"
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if length == 0 and kind == 0:  # block padding
            position += left
            continue
        chunk = data[position + 7 : position + 7 + length]
        if len(chunk) < length:  # the record being written
            return
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


@pytest.mark.timeout(300)  # a W&B client that waits for a server it cannot reach fails here, not in CI's cap
def test_wandb_offline_gets_the_config_once_and_both_stages_under_their_names(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "aesr1-test")
    _log_two_stages(tmp_path, Trackers(["tensorboard", "wandb"], run_name="run-a", output_dir=tmp_path))
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    # W&B's service process may still be writing the file when `finish` returns: wait for its end.
    deadline = time.monotonic() + 120
    while not any(r.WhichOneof("record_type") == "exit" for r in wandb_records(run_file)):
        assert time.monotonic() < deadline, "the offline W&B run file has no exit record"
        time.sleep(0.5)
    history, configs = [], []
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            # a key with "/" may be stored split into `nested_key`
            history.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
        elif kind in ("config", "run"):  # the first config update may travel with the run record
            updates = record.config.update if kind == "config" else record.run.config.update
            configs.append({item.key: json.loads(item.value_json) for item in updates})
    stored = [c for c in configs if "rapo.epsilon_high" in c]
    assert len(stored) == 1 and stored[0]["seed"] == 3 and stored[0]["rapo.num_generations"] == 4
    sft = [(h["sft/step"], h["sft/loss"]) for h in history if "sft/loss" in h]
    assert sft == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    rapo = [(h["rapo/step"], h["rapo/reward/rank"]) for h in history if "rapo/reward/rank" in h]
    assert rapo == [(1, pytest.approx(0.1)), (2, pytest.approx(0.2))]
    held_out = [h for h in history if "held_out/rapo/plcc" in h]
    assert held_out and held_out[0]["held_out/sft/srcc"] == 0.73
    assert any(h.get("held_out/_type") == "table-file" for h in history)  # the W&B table


def test_mlflow_file_store_gets_params_every_step_and_the_table(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "aesr1-test")
    _log_two_stages(tmp_path, Trackers(["mlflow"], run_name="run-b", output_dir=tmp_path))
    (run,) = [p.parent for p in store.glob("*/*/meta.yaml")]
    assert (run / "params" / "rapo.epsilon_high").read_text() == "0.28"
    assert (run / "tags" / "mlflow.runName").read_text() == "run-b"
    sft_loss = [line.split() for line in (run / "metrics" / "sft" / "loss").read_text().splitlines()]
    assert [(float(v), int(s)) for _, v, s in sft_loss] == [(1.0, 1), (0.5, 2), (pytest.approx(1 / 3), 3)]
    rank = (run / "metrics" / "rapo" / "reward" / "rank").read_text().splitlines()
    assert [int(line.split()[2]) for line in rank] == [1, 2]
    assert float((run / "metrics" / "held_out" / "sft" / "srcc").read_text().split()[1]) == 0.73
    assert (run / "artifacts" / "held_out.md").read_text().startswith("| model | PLCC |")


def test_other_processes_open_nothing(tmp_path):
    trackers = Trackers(["wandb", "mlflow"], run_name="x", output_dir=tmp_path, enabled=False)
    trackers.start(CONFIG)
    trackers.log("rapo", 1, {"loss": 1.0})
    trackers.finish()
    assert not (tmp_path / "wandb").exists()


@pytest.mark.timeout(600)
def test_a_training_run_reports_both_stages_and_leaves_model_cards(tmp_path, monkeypatch):
    """`python -m aesr1.train` reporting to W&B and MLflow on a tiny run: both services get the config,
    every stage's metrics under the names TensorBoard uses, and the held-out table; both final
    model directories get a card with the table."""
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    from test_pipeline_outputs import argv

    from aesr1.train.__main__ import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out = tmp_path / "run"
    # the shared settings turn trackers off with --set, which a later --set overrides
    assert main([*argv(out), "--set", "report_to=wandb,mlflow", "--set", "run_name=tiny"]) == 0
    table = (out / "table.md").read_text().strip()

    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    keys = set()
    for record in wandb_records(run_file):
        if record.WhichOneof("record_type") == "history":
            keys |= {item.key or "/".join(item.nested_key) for item in record.history.item}
    assert {"sft/loss", "sft/step", "rapo/loss", "rapo/step", "held_out/rapo/plcc"} <= keys

    (mlflow_run,) = [p.parent for p in (tmp_path / "mlruns").glob("*/*/meta.yaml")]
    assert (mlflow_run / "tags" / "mlflow.runName").read_text() == "tiny"
    assert (mlflow_run / "params" / "rapo.num_generations").read_text() == "2"
    assert (mlflow_run / "metrics" / "sft" / "loss").is_file() and (
        mlflow_run / "metrics" / "rapo" / "loss"
    ).is_file()
    assert (mlflow_run / "artifacts" / "held_out.md").read_text().strip() == table

    for stage in ("sft", "rapo"):
        card = (out / stage / "final" / "README.md").read_text()
        assert card.startswith("---\n") and f"aesr1-{stage}" in card and table in card
