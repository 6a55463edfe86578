"""AesCoT cold-start SFT with trl's SFTTrainer on a tiny Qwen2.5-VL (CPU): loss falls, logs, resume,
Table 3 epoch settings runnable by config alone."""

from __future__ import annotations

import json

import pytest

from aesr1.data.synthetic import make_synthetic_dataset, write_critique
from aesr1.modeling.tiny import build_tiny_model
from aesr1.prompts import SCORING_PROMPT, format_completion
from aesr1.train.config import config_from_dict, load_config
from aesr1.train.sft import ChatCollator, read_cold_start, run_sft, sft_steps
from aesr1.train.tracking import read_metrics


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    items = make_synthetic_dataset(tmp_path_factory.mktemp("syn"), n=16, seed=2, image_size=32)
    return [{"image": i.image, "prompt": SCORING_PROMPT, "completion": format_completion(write_critique(i), i.score)}
            for i in items]  # fmt: skip


def tiny(rows):
    return build_tiny_model(0, vocab_corpus=[r["completion"] for r in rows])


def sft_config(tmp_path, save_steps=2, **sft):
    return config_from_dict({
        "output_dir": str(tmp_path), "progress": False, "report_to": [], "save_steps": save_steps,
        "sft": {"num_train_epochs": 3, "learning_rate": 5e-3, "global_batch_size": 8, "per_device_train_batch_size": 4,
                "warmup_ratio": 0.0, "lr_scheduler_type": "constant", **sft},
    })  # fmt: skip


def test_sft_loss_falls_and_is_logged(rows, tmp_path):
    model, processor = tiny(rows)
    trainer = run_sft(sft_config(tmp_path), model, processor, rows, tmp_path / "sft")
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == sft_steps(sft_config(tmp_path), len(rows)) == 6
    assert losses[-1] < losses[0] - 0.5
    logged = [r for r in read_metrics(tmp_path / "sft" / "sft_metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]
    assert all("entropy" in r for r in logged)
    assert (tmp_path / "sft" / "final" / "config.json").exists()
    assert (tmp_path / "sft" / "final" / "tokenizer.json").exists()


def test_sft_resume_continues_from_checkpoint(rows, tmp_path):
    model, processor = tiny(rows)
    run_sft(sft_config(tmp_path, max_steps=2), model, processor, rows, tmp_path / "sft")
    model, processor = tiny(rows)
    trainer = run_sft(
        sft_config(tmp_path, max_steps=4), model, processor, rows, tmp_path / "sft", resume=True
    )
    assert trainer.state.global_step == 4
    steps = [r["step"] for r in read_metrics(tmp_path / "sft" / "sft_metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3, 4]


class _Killed(Exception):
    pass


def _dies_after_step(step: int):
    from transformers import TrainerCallback

    class Dies(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:  # before the step is logged or checkpointed
                raise _Killed

    return Dies()


def _steps(path):
    drop = {"time", "train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss"}
    return [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(path)]


def test_sft_killed_anywhere_resumes_bit_identically(rows, tmp_path):
    """Killed before the first checkpoint, then mid-epoch after it: each step is logged once, and
    every row (loss, grad norm, token count ...) and the final weights equal an uninterrupted run."""
    from safetensors.torch import load_file

    def run(directory, **kwargs):
        model, processor = tiny(rows)
        # 4 steps
        config = sft_config(directory, save_steps=3, lr_scheduler_type="linear", num_train_epochs=2)
        return run_sft(config, model, processor, rows, directory / "sft", **kwargs)

    run(tmp_path / "full")
    killed = tmp_path / "killed"
    with pytest.raises(_Killed):
        run(killed, callbacks=[_dies_after_step(2)])  # no checkpoint yet (save_steps 3)
    with pytest.raises(_Killed):
        run(killed, resume=True, callbacks=[_dies_after_step(4)])  # after checkpoint-3, mid-epoch
    assert [r["step"] for r in read_metrics(killed / "sft" / "sft_metrics.jsonl")] == [1, 2, 3]
    run(killed, resume=True)

    assert _steps(killed / "sft" / "sft_metrics.jsonl") == _steps(
        tmp_path / "full" / "sft" / "sft_metrics.jsonl"
    )
    ours = load_file(killed / "sft" / "final" / "model.safetensors")
    theirs = load_file(tmp_path / "full" / "sft" / "final" / "model.safetensors")
    assert all(ours[name].equal(theirs[name]) for name in theirs)


@pytest.mark.parametrize("name", ["table3_sft1", "table3_sft2", "table3_sft10"])
def test_table3_epoch_settings_run(rows, tmp_path, name):
    config = load_config(name)
    assert sft_steps(config, 3000) == pytest.approx(3000 / 64 * config.sft.num_train_epochs, abs=1)
    small = config_from_dict(
        {"output_dir": str(tmp_path), "progress": False, "report_to": [],
         "sft": {"global_batch_size": 4, "per_device_train_batch_size": 4, "max_steps": 1}}, config,
    )  # fmt: skip
    assert small.sft.num_train_epochs == config.sft.num_train_epochs
    model, processor = tiny(rows)
    trainer = run_sft(small, model, processor, rows, tmp_path / "sft")
    assert trainer.state.global_step == 1


def test_table3_zero_epochs_skips_sft():
    assert sft_steps(load_config("table3_sft0"), 3000) == 0


def test_collator_labels_only_completion(rows):
    _, processor = tiny(rows)
    batch = ChatCollator(processor)(rows[:2])
    labels = batch["labels"]
    prompt_length = batch["input_ids"].shape[1] - (labels != -100).sum(dim=1).max()
    assert (labels[:, :prompt_length] == -100).all()
    assert "pixel_values" in batch and "image_grid_thw" in batch


def test_cold_start_file_checks(tmp_path):
    with pytest.raises(FileNotFoundError, match="cold-start"):
        read_cold_start(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "x.png", "prompt": SCORING_PROMPT}) + "\n")
    with pytest.raises(ValueError, match="completion"):
        read_cold_start(bad)
    record = json.dumps({"image": "x.png", "prompt": SCORING_PROMPT, "completion": "<answer>0.5</answer>"})
    for broken, problem in ((record[:-4], "line 2 is not JSON"), ("[1, 2]", "line 2 is a JSON list")):
        bad.write_text(record + "\n" + broken + "\n")
        with pytest.raises(ValueError, match=problem):
            read_cold_start(bad)
