"""`benches/bench_scale.py`: the smoke run end to end (ours and trl's GRPOTrainer in one process), its
arithmetic, and its argument checks. No timing asserts: CPU figures mean nothing here."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

BENCHES = Path(__file__).resolve().parent.parent / "benches"
sys.path.insert(0, str(BENCHES))
import bench_scale  # noqa: E402

TIMING_FIELDS = ("step_s", "train_s", "train_tokens_per_s", "train_tokens_per_step")
ROLLOUT_FIELDS = ("rollout_s", "rollout_tokens_per_s", "completion_tokens_per_step")


def _positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_smoke_run_measures_both_stacks_on_the_same_work(tmp_path):
    out = tmp_path / "scale.json"
    # One thread: the 2-core CI machine is shared, and oversubscribed OpenMP threads spin.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(BENCHES / "bench_scale.py"), "--smoke", "--json", str(out), "--no-progress",
         "--workdir", str(tmp_path / "work")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    report = json.loads(out.read_text())
    rows = {row["method"]: row for row in report["rows"]}
    assert set(rows) == {"aesr1-sft", "aesr1-rapo", "trl-grpo-static"}
    workload = report["workload"]
    assert workload["size"] == "tiny" and workload["deepspeed"] is None
    assert report["device"].startswith("CPU (")
    for method, row in rows.items():
        assert row["status"] == "ok" and row["error"] is None, (method, row)
        assert row["steps"] == workload["timed_steps"] == len(row["step_s_all"])
        for name in TIMING_FIELDS:
            assert _positive_finite(row[name]), (method, name, row[name])
        assert all(_positive_finite(s) for s in row["step_s_all"])
    for method in ("aesr1-rapo", "trl-grpo-static"):
        row = rows[method]
        for name in ROLLOUT_FIELDS:
            assert _positive_finite(row[name]), (method, name, row[name])
        assert row["rollout_s"] <= row["step_s"] + 1e-9 and row["train_s"] <= row["step_s"] + 1e-9
        sequences = workload["images_per_step"] * workload["num_generations"]
        assert row["completion_tokens_per_step"] <= sequences * workload["max_completion_length"]
    ours, trl = rows["aesr1-rapo"], rows["trl-grpo-static"]
    # Same images, prompt and processor on both sides: the same prompt tokens per optimiser step.
    prompt_ours = ours["train_tokens_per_step"] - ours["completion_tokens_per_step"]
    prompt_trl = trl["train_tokens_per_step"] - trl["completion_tokens_per_step"]
    assert prompt_ours == prompt_trl > 0
    ratios = report["ratios"]
    assert ratios["trl_baseline"] == "trl-grpo-static"
    assert ratios["speedup"] == pytest.approx(trl["step_s"] / ours["step_s"])
    assert "memory_ratio" not in ratios  # no allocator statistics on CPU
    assert "RAPO step speed-up vs trl-grpo-static" in proc.stdout
    assert "aesr1-sft" in proc.stdout and "step s" in proc.stdout


def test_summary_uses_medians_of_times_and_rates_over_sums():
    records = [
        bench_scale.StepRecord(
            seconds=3.0, rollout_s=2.0, train_s=1.0, completion_tokens=100, train_tokens=400
        ),
        bench_scale.StepRecord(
            seconds=5.0, rollout_s=4.0, train_s=1.0, completion_tokens=100, train_tokens=400
        ),
        bench_scale.StepRecord(
            seconds=4.0, rollout_s=2.0, train_s=2.0, completion_tokens=200, train_tokens=500
        ),
    ]
    row = bench_scale.summarise("aesr1-rapo", records, peak_gb=1.5, leftover_gb=0.0)
    assert row.step_s == 4.0 and row.rollout_s == 2.0 and row.train_s == 1.0
    assert row.rollout_tokens_per_s == pytest.approx(400 / 8.0)
    assert row.train_tokens_per_s == pytest.approx(1300 / 4.0)
    assert row.completion_tokens_per_step == pytest.approx(400 / 3)
    assert row.step_s_all == [3.0, 5.0, 4.0] and row.peak_gb == 1.5
    with pytest.raises(RuntimeError, match="no timed steps"):
        bench_scale.summarise("x", [], peak_gb=None, leftover_gb=None)


def test_ratios_are_against_the_faster_trl_row():
    def row(method, step, peak, status="ok"):
        return bench_scale.Row(method=method, status=status, step_s=step, peak_gb=peak)

    rows = [
        row("aesr1-rapo", 2.0, 30.0),
        row("trl-grpo-static", 5.0, 40.0),
        row("trl-grpo-dynamic", 4.0, 50.0),
    ]
    summary = bench_scale.ratios(rows)
    assert summary["trl_baseline"] == "trl-grpo-dynamic"
    assert summary["speedup"] == pytest.approx(2.0) and summary["memory_ratio"] == pytest.approx(0.6)
    # a failed trl row is no baseline; without an ok pair there are no ratios
    rows[2] = row("trl-grpo-dynamic", None, None, status="error")
    assert bench_scale.ratios(rows)["trl_baseline"] == "trl-grpo-static"
    assert bench_scale.ratios(rows[:1]) == {}


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--smoke", "--micro-batch", "3"], "micro_batch_size"),
        (["--smoke", "--steps", "0"], "timed_steps"),
        (["--smoke", "--methods", "aesr1-rapo,vllm"], "--methods"),
        (["--smoke", "--deepspeed", "zero9"], "zero9"),
    ],
)
def test_bad_arguments_fail_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_scale.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_full_workload_refuses_cpu_with_a_pointer_to_smoke():
    with pytest.raises(SystemExit, match="--smoke"):
        bench_scale.main(["--device", "cpu"])
