"""The ablation study (`python -m aesr1.train.study`): grids, shared stages, measures, verdicts, and the
smoke study killed with SIGKILL after its first run and resumed."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aesr1.train.study.grid import Check, Claim, Operand, grid_from_dict, load_grid, packaged_grids
from aesr1.train.study.measures import curve_measures, distribution_measures, held_out_measures
from aesr1.train.study.verdicts import check_measure, judge, sign_test

REPO = Path(__file__).resolve().parents[1]


def _grid(**overrides):
    values = {"name": "g", "variants": [{"name": "a", "set": ["reward.rank=1"]}, {"name": "b"}]}
    values.update(overrides)
    return values


def test_packaged_grids_load_and_table2_uses_the_packaged_reward_weights():
    from aesr1.train.config import read_config_values

    assert {"smoke", "table2", "table3"} <= set(packaged_grids())
    table2 = load_grid("table2")
    files = {"binary": "table2_binary", "error": "table2_abs", "rank": "table2_rank",
             "binary+rank": "table2_binary_rank", "error+rank": "table2_abs_rank"}  # fmt: skip
    assert [v.name for v in table2.variants] == list(files)
    for name, config in files.items():
        weights = {}
        for assignment in table2.variant(name).set:
            key, value = assignment.split("=")
            weights[key.removeprefix("reward.")] = float(value)
        packaged = read_config_values(config)["reward"]
        assert weights == {k: float(packaged[k]) for k in ("binary", "abs", "rank")}, name


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": 1}, "unknown key(s) colour"),
        ({"variants": []}, "'variants' must be a non-empty list"),
        ({"variants": [{"name": "a"}, {"name": "a"}]}, "repeated: a"),
        ({"variants": [{"name": "a@sft"}]}, "without '@'"),
        ({"variants": [{"name": "a", "set": ["reward.rank"]}]}, "not section.key=value"),
        ({"claims": [{"id": 1, "checks": [{"a": "a", "b": "c", "expect": "higher", "measures": "plcc"}]}]},
         "no variant named 'c'"),
        ({"claims": [{"id": 1, "checks": [{"a": "a", "b": "b", "expect": "up", "measures": "plcc"}]}]},
         "expect must be 'higher' or 'lower'"),
        ({"claims": [{"id": 1, "checks": [{"a": "a", "b": "b", "expect": "higher", "measures": "accuracy"}]}]},
         "unknown measure 'accuracy'"),
        ({"claims": [{"id": 1, "checks": [{"a": "a@rl", "b": "b", "expect": "higher", "measures": "plcc"}]}]},
         "the part after @"),
        # YAML 1.1 reads a bare `on` key as True: the key is `measures`, and the error names it.
        ({"claims": [{"id": 1, "checks": [{"a": "a", "b": "b", "expect": "higher", True: ["plcc"]}]}]},
         "unknown key(s) True"),
    ],
)  # fmt: skip
def test_bad_grids_are_refused_naming_the_problem(change, message):
    with pytest.raises(ValueError, match=None) as error:
        grid_from_dict(_grid(**change), "my.yaml")
    assert message in str(error.value) and "my.yaml" in str(error.value)


def test_a_grid_file_that_is_missing_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_grid(tmp_path / "nope.yaml")


def test_plan_shares_cold_starts_and_identical_runs_across_grids(tmp_path):
    from aesr1.train.study.plan import make_plan

    table2, table3, fig1a = load_grid("table2"), load_grid("table3"), load_grid("fig1a")
    plan = make_plan([table2, table3, fig1a], [0, 1, 2], tmp_path)
    cold = [s for s in plan.stages if s.kind == "cold"]
    rapo = [s for s in plan.stages if s.kind == "rapo"]
    # Per seed: Table 2's one cold start (3 epochs) is Table 3's sft-3ep; 1 and 9 epochs are new.
    assert len(cold) == 3 * 3
    # Per seed: 5 reward variants + 3 cold-start lengths, Table 3's sft-3ep run being Table 2's error+rank.
    # Fig. 1a's sigma-0.1 run is Table 2's error+rank run: sigma 0.05 and 0.2 add two per seed.
    assert len(rapo) == 3 * (7 + 2)
    for seed in range(3):
        colds = {plan.runs["table2"][v.name][seed][0].key for v in table2.variants}
        assert len(colds) == 1
        assert plan.runs["table3"]["sft-3ep"][seed] == plan.runs["table2"]["error+rank"][seed]
        assert plan.runs["fig1a"]["sigma-0.1"][seed] == plan.runs["table2"]["error+rank"][seed]
        assert plan.runs["table3"]["sft-1ep"][seed][0].key not in colds
    configs = [s.config for s in rapo]
    assert {c.seed for c in configs} == {0, 1, 2}
    assert all(c.model.tiny_seed == c.seed for c in configs)
    assert all(c.data.spec == f"synthetic:{tmp_path.resolve() / 'data' / 'synthetic'}" for c in configs)
    # Keys hash the settings that differ from the defaults: a default given explicitly (or a setting
    # added later at its default) leaves every key, so a study still resumes.
    again = make_plan([table2], [0], tmp_path, sets=("rapo.epsilon=0.2", "model.lora.dropout=0.05"))
    assert again.runs["table2"]["error"][0][1].key == plan.runs["table2"]["error"][0][1].key
    # ... nor on where the study lies (its synthetic images are in it).
    moved = make_plan([table2], [0], tmp_path / "elsewhere")
    assert moved.runs["table2"]["error"][0][1].key == plan.runs["table2"]["error"][0][1].key
    # A cold start runs before the RAPO runs that start from it.
    order = [s.key for s in plan.stages]
    assert all(order.index(s.cold.key) < order.index(s.key) for s in rapo)


def test_distribution_measures_match_float64_references():
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 1, 200)
    pred = np.clip(gt + rng.normal(0, 0.1, 200), 0, 1)
    pred[::7] = np.nan
    ok = np.isfinite(pred)
    out = distribution_measures(pred, gt)
    assert out["mae"] == pytest.approx(float(np.mean(np.abs(pred[ok] - gt[ok]))), rel=1e-12)
    assert out["w1"] == pytest.approx(wasserstein_distance(pred[ok], gt), rel=1e-12)
    # W1 between two samples of equal size is the mean gap of their sorted values.
    a, b = np.array([0.1, 0.5, 0.9]), np.array([0.2, 0.2, 0.8])
    assert distribution_measures(a, b)["w1"] == pytest.approx((0.1 + 0.3 + 0.1) / 3, abs=1e-15)
    assert math.isnan(distribution_measures(np.full(3, np.nan), b)["w1"])
    row = {
        "pred": [0.1, None, 0.9],
        "gt": [0.2, 0.2, 0.8],
        "plcc": None,
        "srcc": 0.5,
        "parse_failure_rate": 0.25,
    }
    measures = held_out_measures(row)
    assert math.isnan(measures["plcc"]) and measures["srcc"] == 0.5 and measures["parse_failures"] == 0.25
    assert measures["mae"] == pytest.approx(0.1, abs=1e-15)


def test_curve_measures_read_the_first_step_and_the_last_rounds():
    rows = [{"step": s, "round": (s - 1) // 2, "entropy": 3.0 - 0.1 * s, "completion_length/mean": 40.0 - s}
            for s in range(1, 21)]  # fmt: skip
    out = curve_measures(rows)
    assert out["start_entropy"] == pytest.approx(2.9)
    assert out["final_entropy"] == pytest.approx(np.mean([3.0 - 0.1 * 19, 3.0 - 0.1 * 20]))
    assert out["start_length"] == pytest.approx(38.5) and out["final_length"] == pytest.approx(20.5)
    assert out["length_kept"] == pytest.approx(20.5 / 38.5)


def _values(a_plcc, b_plcc):
    return {
        "a": {s: {"rapo": {"plcc": v}} for s, v in enumerate(a_plcc)},
        "b": {s: {"rapo": {"plcc": v}, "sft": {"plcc": v - 0.5}} for s, v in enumerate(b_plcc)},
    }


def test_verdicts_follow_the_stated_rules():
    assert sign_test(3, 3) == 0.125 and sign_test(2, 3) == 0.5 and sign_test(0, 3) == 1.0
    higher = Check(Operand("a"), Operand("b"), "higher", ("plcc",))
    result = check_measure(higher, "plcc", _values([0.7, 0.8, 0.9], [0.6, 0.75, 0.7]))
    diffs = [0.1, 0.05, 0.2]
    assert (result.k, result.n, result.status) == (3, 3, "holds")
    assert result.mean == pytest.approx(np.mean(diffs)) and result.std == pytest.approx(np.std(diffs, ddof=1))
    assert "in 3 of 3 seeds" in result.sentence() and "p = 0.125" in result.sentence()
    mixed = check_measure(higher, "plcc", _values([0.7, 0.8, 0.9], [0.6, 0.85, 0.9]))
    assert (mixed.k, mixed.status) == (1, "mixed")  # a tie counts against
    reversed_ = check_measure(higher, "plcc", _values([0.5, 0.5], [0.6, 0.7]))
    assert reversed_.status == "reversed"
    against_sft = Check(Operand("a"), Operand("b", "sft"), "higher", ("plcc",))
    assert check_measure(against_sft, "plcc", _values([0.3], [0.6])).status == "not testable"
    threshold = Check(Operand("a"), 0.75, "lower", ("plcc",))
    assert check_measure(threshold, "plcc", _values([0.7, 0.8, 0.6], [0, 0, 0])).k == 2
    claim = Claim("x", "a beats b", (higher,))
    assert judge(claim, _values([0.7, 0.8, 0.9], [0.6, 0.75, 0.7])).verdict.startswith(
        "consistent with the paper"
    )
    assert judge(claim, _values([0.5, 0.5, 0.5], [0.6, 0.7, 0.8])).verdict.startswith("contradicted")
    assert judge(claim, _values([0.7, 0.8], [0.6, 0.9])).verdict.startswith("mixed: 0 of 1")


def test_a_study_directory_is_continued_only_with_resume(tmp_path, capsys):
    from aesr1.train.study.__main__ import check_study_dir, main

    check_study_dir(tmp_path / "new", resume=False, overwrite=False, report_only=False)
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "plan.json").write_text("{}")
    assert main(["--smoke", "--output-dir", str(tmp_path / "study")]) == 2
    assert "pass --resume to continue or extend it" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no study"):
        check_study_dir(tmp_path / "other", resume=True, overwrite=False, report_only=False)
    with pytest.raises(ValueError, match="exclude each other"):
        check_study_dir(tmp_path / "study", resume=True, overwrite=True, report_only=False)
    assert main(["table2", "--seeds", "0", "--output-dir", str(tmp_path / "x")]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err
    assert main(["table2", "--jobs", "0", "--output-dir", str(tmp_path / "x")]) == 2
    assert "--jobs must be >= 1" in capsys.readouterr().err


def test_busy_seconds_count_side_by_side_runs_once_and_skip_the_gap_before_a_resume(tmp_path):
    from aesr1.train.study.report import busy_seconds

    events = [
        {"event": "start", "stage": "a", "time": 100.0},
        {"event": "start", "stage": "b", "time": 102.0},
        {"event": "done", "stage": "a", "time": 110.0},
        {"event": "start", "stage": "c", "time": 111.0},  # killed: no "done", run again below
        {"event": "done", "stage": "b", "time": 115.0},
        {"event": "start", "stage": "c", "time": 200.0},
        {"event": "done", "stage": "c", "time": 230.0},
        {"event": "start", "stage": "other", "time": 300.0},
        {"event": "done", "stage": "other", "time": 400.0},
    ]
    log = tmp_path / "study_log.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for e in events) + '{"event": "sta')
    # a and b overlap: 100..115; c's finished run: 200..230; "other" is not asked for.
    assert busy_seconds(log, {"a", "b", "c"}) == pytest.approx(15.0 + 30.0)
    assert busy_seconds(tmp_path / "missing.jsonl", {"a"}) == 0.0


def _events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "study_log.jsonl").read_text().splitlines()]


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_smoke_study_killed_after_its_first_run_resumes_without_redoing_it(tmp_path):
    out = tmp_path / "study"
    command = [
        sys.executable,
        "-m",
        "aesr1.train.study",
        "--smoke",
        "--output-dir",
        str(out),
        "--no-progress",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None:
        # The study's "done" event follows the stage's STUDY_DONE.json marker: wait for the event,
        # so the kill lands after the first stage has finished in both records.
        log = out / "study_log.jsonl"
        if log.is_file() and '"event": "done"' in log.read_text():
            first.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    output = first.communicate(timeout=60)[0]
    assert first.returncode == -signal.SIGKILL, output[-3000:]
    assert [e["event"] for e in _events(out)][:2] == ["start", "done"]
    cold_key = _events(out)[0]["stage"]

    # Resumed with two jobs, both RAPO runs start side by side in worker processes; killing the
    # study kills its workers too, so the next --resume cannot meet a stage still running.
    parallel = [*command, "--resume", "--jobs", "2"]
    before = len(_events(out))
    second = subprocess.Popen(parallel, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, workers = time.time() + 300, []
    while time.time() < deadline and second.poll() is None:
        workers = [e["pid"] for e in _events(out)[before:] if e["event"] == "start"]
        if len(workers) == 2:
            second.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    output = second.communicate(timeout=60)[0]
    assert second.returncode == -signal.SIGKILL and len(workers) == 2, output[-3000:]
    assert second.pid not in workers and len(set(workers)) == 2, "each stage runs in its own worker"
    deadline = time.time() + 5  # a worker left running would still be importing or training
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() and
                                         "Z" not in _proc_state(pid) for pid in workers):  # fmt: skip
        time.sleep(0.1)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists() and "Z" not in _proc_state(pid)]

    resumed = subprocess.run(parallel, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    events = _events(out)
    assert [e["stage"] for e in events if e["event"] == "start"].count(cold_key) == 1
    done = [e["stage"] for e in events if e["event"] == "done"]
    assert sorted(done) == sorted(set(done)) and len(done) == 3
    rapo_starts = [e for e in events if e["event"] == "start" and e["stage"] != cold_key][-2:]
    first_rapo_done = min(e["time"] for e in events if e["event"] == "done" and e["stage"] != cold_key)
    assert len({e["stage"] for e in rapo_starts}) == 2 and all(
        e["time"] < first_rapo_done for e in rapo_starts
    )
    # Both RAPO runs start from the one cold start: its weights are hard links, not copies.
    cold_model = out / "runs" / cold_key / "sft" / "final" / "model.safetensors"
    rapo_dirs = sorted((out / "runs").glob("rapo-*"))
    assert len(rapo_dirs) == 2
    for directory in rapo_dirs:
        assert (directory / "sft" / "final" / "model.safetensors").stat().st_ino == cold_model.stat().st_ino
        assert (directory / "rapo" / "final" / "COMPLETE").is_file()
    report = json.loads((out / "report" / "study.json").read_text())
    smoke = report["grids"]["smoke"]
    assert set(smoke["variants"]) == {"error", "error+rank"}
    for variant in smoke["variants"].values():
        assert set(variant["seeds"]) == {"0"}
        assert {"plcc", "w1", "parse_failures", "start_entropy"} <= set(variant["seeds"]["0"]["rapo"])
    assert [c["id"] for c in smoke["claims"]] == ["s"]
    table = (out / "report" / "smoke.md").read_text()
    assert "| error |" in table and "| error+rank |" in table and "| error, error+rank |" in table
    for name in ("smoke_training.png", "smoke_distributions.png"):
        assert (out / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["wall_seconds"] > 0 and all(s["seconds"] is not None for s in report["stages"].values())
