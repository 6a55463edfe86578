"""An output directory holds one run: `python -m aesr1.train` refuses to mix a new run into it,
`--resume` refuses other settings, `--overwrite` starts it clean, and RAPO run on its own after
SFT starts from (and is anchored to) the SFT model."""

from __future__ import annotations

import json

import pytest
import torch

from aesr1.train.__main__ import main
from aesr1.train.tracking import read_metrics

SETTINGS = [
    "data.synthetic_n=40", "data.synthetic_image_size=32", "data.cold_start_per_bin=2", "data.max_eval_images=4",
    "model.dtype=float32", "report_to=none", "save_steps=2",
    "sft.global_batch_size=2", "sft.per_device_train_batch_size=2", "sft.num_train_epochs=1", "sft.max_completion_length=24",
    "rapo.num_generations=2", "rapo.mini_batch_size=4", "rapo.per_device_train_batch_size=4", "rapo.steps_per_generation=1",
    "rapo.max_steps=2", "rapo.max_completion_length=8",
    "eval.batch_size=4", "eval.max_completion_length=8", "eval.eval_steps=0",
]  # fmt: skip


def argv(out, *extra: str) -> list[str]:
    sets = [a for s in SETTINGS for a in ("--set", s)]
    return ["--data", "synthetic", "--output-dir", str(out), "--no-progress", *sets, *extra]


def _error(capsys, args) -> str:
    assert main(args) == 2
    return capsys.readouterr().err


@pytest.fixture
def finished_run(tmp_path):
    """A directory as a finished run of `argv(out)` leaves it (contents that matter to the checks)."""
    from aesr1.train.__main__ import build_config, parse_args

    out = tmp_path / "run"
    config, _ = build_config(parse_args(argv(out)))
    (out / "sft" / "final").mkdir(parents=True)
    (out / "sft" / "final" / "COMPLETE").write_text("")
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
    stale = {"plcc": 0.5, "srcc": 0.5, "parse_failure_rate": 0.0, "scored": 4.0, "images": 4, "pred": [0.5] * 4,
             "gt": [0.5] * 4}  # fmt: skip
    (out / "results.json").write_text(json.dumps({"untrained": stale, "sft": stale, "rapo": stale}))
    for stage in ("sft", "rapo"):
        (out / stage).mkdir(exist_ok=True)
        rows = [{"stage": stage, "step": s, "loss": 9.0} for s in (1, 2)]
        (out / stage / f"{stage}_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_a_run_refuses_a_directory_holding_another(finished_run, capsys):
    new = ["--seed", "1", "--set", "sft.learning_rate=3e-4"]
    err = _error(capsys, argv(finished_run, *new))
    assert "already holds a run" in err and "--overwrite" in err and "--resume" in err
    err = _error(capsys, argv(finished_run, "--resume", *new))
    assert "seed: 0 -> 1" in err and "sft.learning_rate" in err and "--overwrite" in err
    assert "rapo." not in err  # only the keys that differ are named
    err = _error(capsys, argv(finished_run, "--resume", "--overwrite"))
    assert "exclude" in err
    foreign = finished_run.parent / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"")
    assert "no config.json" in _error(capsys, argv(foreign, "--overwrite"))
    assert (foreign / "holiday.jpg").exists()


def test_rapo_alone_needs_the_finished_sft_model(tmp_path, capsys):
    err = _error(capsys, argv(tmp_path / "fresh", "--stages", "rapo"))
    assert "sft" in err and "sft.num_train_epochs=0" in err


def test_overwrite_starts_clean_and_rapo_alone_starts_from_sft(finished_run, monkeypatch):
    """`--overwrite` with new settings: new config, freshly evaluated rows, each metrics step once.
    Then `--resume --stages rapo` trains RAPO from sft/final, against sft/final as reference."""
    from aesr1.train import pipeline, rapo

    new = ["--seed", "1", "--set", "sft.learning_rate=3e-4"]
    assert main(argv(finished_run, "--overwrite", "--stages", "sft", *new)) == 0
    saved = json.loads((finished_run / "config.json").read_text())
    assert saved["seed"] == 1 and saved["sft"]["learning_rate"] == 3e-4
    results = json.loads((finished_run / "results.json").read_text())
    assert set(results) == {"untrained", "sft"}  # the old RAPO row went with the old run
    assert results["sft"]["pred"] != [0.5] * 4
    steps = [r["step"] for r in read_metrics(finished_run / "sft" / "sft_metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3]
    assert not (finished_run / "rapo").exists()

    started_from = {}
    original = rapo.RAPOTrainer.__init__

    def spy(self, config, model, processor, train_items, **kwargs):
        started_from["policy"] = {k: v.clone() for k, v in model.state_dict().items()}
        started_from["reference"] = kwargs["ref_model"].state_dict()
        original(self, config, model, processor, train_items, **kwargs)

    monkeypatch.setattr(rapo.RAPOTrainer, "__init__", spy)
    assert main(argv(finished_run, "--resume", "--stages", "rapo", *new)) == 0
    config = pipeline.saved_run_config(pipeline.TrainConfig(output_dir=str(finished_run)))
    sft_model, _ = pipeline.load(config, finished_run / "sft" / "final")
    expected = sft_model.state_dict()
    for role in ("policy", "reference"):
        assert started_from[role].keys() == expected.keys()
        assert all(torch.equal(started_from[role][k], expected[k]) for k in expected), role
    results = json.loads((finished_run / "results.json").read_text())
    assert set(results) == {"untrained", "sft", "rapo"}
    steps = [r["step"] for r in read_metrics(finished_run / "rapo" / "rapo_metrics.jsonl") if "loss" in r]
    assert steps == [1, 2]
    assert "after RAPO" in (finished_run / "table.md").read_text()


def test_results_json_writes_non_finite_metrics_as_null(tmp_path):
    """An untrained model parses nothing: its PLCC/SRCC are NaN, which `results.json` stores as null."""
    import json

    import numpy as np

    from aesr1.train.evaluation import HeldOutResult
    from aesr1.train.pipeline import _Results

    result = HeldOutResult(plcc=np.nan, srcc=np.nan, parse_failure_rate=1.0, images=3, scored=1,
                           pred=np.array([np.nan, np.nan, 0.5]), gt=np.array([0.1, 0.9, 0.4]))  # fmt: skip
    results = _Results(tmp_path / "results.json", write=True)
    results.save("initial", result)

    def reject(constant):
        raise AssertionError(f"bare {constant} in results.json")

    row = json.loads((tmp_path / "results.json").read_text(), parse_constant=reject)["initial"]
    assert row["plcc"] is None and row["pred"][:2] == [None, None]
    assert np.isnan(_Results(tmp_path / "results.json", write=False).held_out("initial").plcc)
