"""`python -m aesr1.train --deepspeed zero3` under torchrun in two CPU processes (gloo): both stages
on DeepSpeed, then `--resume`. (Its own file, so that a parallel test run can give it a worker of
its own: it is the slowest test.)"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_train_deepspeed import _free_port

GLOO_ALLREDUCE = Path(__file__).parent / "workers" / "gloo_allreduce.py"


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is an optional extra")
def test_pipeline_runs_both_stages_under_zero3_in_two_processes_and_resumes(tmp_path):
    """`python -m aesr1.train --deepspeed zero3` under torchrun: SFT (trl) and RAPO both on DeepSpeed,
    evaluations on gathered weights, then `--resume` finds both stages done."""
    out = tmp_path / "run"
    sets = ["data.synthetic_n=80", "data.synthetic_image_size=32", "data.cold_start_per_bin=8",
            "data.max_eval_images=16", "model.dtype=float32", "sft.global_batch_size=8", "sft.per_device_train_batch_size=2",
            "sft.num_train_epochs=1", "sft.max_completion_length=32", "rapo.mini_batch_size=8", "rapo.per_device_train_batch_size=2",
            "rapo.steps_per_generation=2", "rapo.max_steps=4", "rapo.max_completion_length=12",
            "eval.batch_size=8", "eval.max_completion_length=12", "eval.eval_steps=2", "save_steps=2"]  # fmt: skip
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TRITON_INTERPRET="0",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")  # fmt: skip

    def launch(*extra: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                   str(_free_port()), str(GLOO_ALLREDUCE), "-m", "aesr1.train", "--data", "synthetic", "--output-dir", str(out),
                   "--deepspeed", "zero3", "--no-progress", *[a for s in sets for a in ("--set", s)], *extra]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
        return done

    launch()
    assert any((out / "sft" / "checkpoint-2").glob("global_step*")), "SFT did not run on DeepSpeed"
    assert (out / "rapo" / "checkpoint-2" / "pytorch_model").is_dir(), "RAPO did not run on DeepSpeed"
    steps = [
        json.loads(line)["step"] for line in (out / "rapo" / "rapo_metrics.jsonl").read_text().splitlines()
    ]
    assert sorted(set(steps)) == [1, 2, 3, 4]
    results = json.loads((out / "results.json").read_text())
    assert {"untrained", "sft", "rapo"} <= set(results)
    before = (out / "rapo" / "rapo_metrics.jsonl").read_text()
    resumed = launch("--resume")
    assert "after RAPO" in resumed.stdout
    assert (out / "rapo" / "rapo_metrics.jsonl").read_text() == before  # nothing retrained
