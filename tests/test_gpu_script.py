"""`benches/gpu/run.sh`, the one-command GPU run, rehearsed on CPU (`--rehearsal`): every step runs
with tiny shapes (Triton kernels interpreted, the rollout engine eagerly), and what lands in $OUT
is what the device run would bring back. Also: a step cut by its timeout or killed keeps the rows
it wrote, backends that fell back are failures without figures, and the pins/wheel checks of
`benches/gpu/wheels.py`. No timing asserts: CPU figures mean nothing here."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GPU = ROOT / "benches" / "gpu"
sys.path.insert(0, str(GPU))
sys.path.insert(0, str(ROOT / "benches"))
import rowlog  # noqa: E402
import wheels  # noqa: E402

STEPS = ("install", "env", "pytest-cuda", "bench-loss", "bench-rollout", "bench-scale")
OUT_FILES = {"summary.txt", "install.txt", "env.txt", "pytest.log", "steps.log", "rows.jsonl"}
#: figures each bench's ok rows carry (what the README cites)
CITED = {
    "loss": ("ms", "floor_ms", "floor_ratio", "loss"),
    "rollout": ("total_s", "tokens_per_s", "ms_per_step", "new_tokens"),
    "scale": ("step_s", "rollout_s", "train_s"),
}


def run_script(out: Path, *args: str, env_extra: dict | None = None, timeout: float = 600):
    env = {key: value for key, value in os.environ.items() if key != "AESR1_ROWS_FAULT"}
    env.update({"OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **(env_extra or {})})
    return subprocess.run(
        ["bash", str(GPU / "run.sh"), "--rehearsal", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_rows(out: Path) -> list[dict]:
    lines = (out / "rows.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]  # every line must be valid JSON


def summary_lines(out: Path) -> list[str]:
    return (out / "summary.txt").read_text().splitlines()


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    out = tmp_path_factory.mktemp("rehearsal")
    proc = run_script(out)
    return proc, out


@pytest.mark.timeout(900)
def test_rehearsal_runs_every_step_into_at_most_eight_files(rehearsal):
    proc, out = rehearsal
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    files = {p.name for p in out.rglob("*") if p.is_file()}
    assert files == OUT_FILES and len(files) <= 8
    lines = summary_lines(out)
    for step in STEPS:
        assert any(line.split()[:2] == ["ok", step] for line in lines), (step, lines)
    assert not any(line.startswith("FAILED") for line in lines), lines
    assert "no rows" not in (out / "summary.txt").read_text()
    pytest_line = next(line for line in lines if line.split()[1:2] == ["pytest-cuda"])
    assert "skipped" in pytest_line  # the CUDA cases, collected and skipped on CPU
    assert "dry run" in (out / "install.txt").read_text()


@pytest.mark.timeout(900)
def test_rehearsal_rows_are_complete_and_figures_belong_to_ok_rows_only(rehearsal):
    _, out = rehearsal
    rows = read_rows(out)
    assert {row["bench"] for row in rows} == set(CITED)
    for row in rows:
        assert set(row) == set(rowlog.FIELDS), row
        assert row["status"] in rowlog.STATUSES and row["rehearsal"] is True
        if row["status"] != "ok":
            assert row["figures"] == {} and row["note"], row
        for value in row["figures"].values():
            assert value is None or (isinstance(value, (int, float)) and math.isfinite(value)), row
    assert not [row for row in rows if row["status"] in ("fallback", "failed")]
    by_name = {(row["bench"], row["name"]): row for row in rows}
    for bench, fields in CITED.items():
        measured = [row for row in rows if row["bench"] == bench and row["status"] == "ok"]
        measured = [row for row in measured if not row["name"].startswith(("ratio", "device", "greedy"))]
        assert measured, bench
        for row in measured:
            assert set(fields) <= set(row["figures"]), row
    # the GPU's code paths: Triton kernels (interpreted) beside the torch backend, swept launches,
    # the engine beside generate, our trainer's rollouts on the engine
    assert by_name["loss", "logits: ours rapo_loss (in place) [triton]"]["status"] == "ok"
    assert by_name["loss", "logits: ours rapo_loss (in place) [torch backend]"]["status"] == "ok"
    sweep = [row for row in rows if row["name"].startswith("sweep:")]
    assert len(sweep) == 12 and all(row["status"] == "ok" for row in sweep)
    assert {f"programs_per_sm={p}" for p in (1, 2, 4)} <= {row["name"].split(", ")[0][7:] for row in sweep}
    for method in ("engine", "engine-eager", "generate-dynamic", "generate-static", "greedy check"):
        assert by_name["rollout", method]["status"] == "ok", method
    assert by_name["rollout", "greedy check"]["figures"]["identical_rows"] == 4
    rapo = by_name["scale", "aesr1-rapo"]
    assert rapo["status"] == "ok" and "rollouts: engine" in rapo["note"]
    for method in ("aesr1-rapo", "trl-grpo-static", "aesr1-sft"):
        assert by_name["scale", method]["status"] == "ok"
        assert by_name["scale", f"{method} step 0"]["note"] == "warm-up"
    # a missing peer is skipped on CPU, with its reason
    liger = by_name["loss", "logits: Liger triton_grpo_loss (in place)"]
    assert liger["status"] == "skipped" and ("not installed" in liger["note"] or "CUDA" in liger["note"])


@pytest.mark.timeout(600)
def test_a_step_cut_by_its_timeout_or_killed_keeps_the_rows_written_before(tmp_path):
    # bench-loss hangs after its 1st row (a quick one: a slow host still writes it well inside the
    # 30 s limit) until that limit; bench-rollout dies (SIGKILL) after its 2nd
    proc = run_script(
        tmp_path,
        "--only",
        "bench-loss,bench-rollout",
        env_extra={
            "AESR1_ROWS_FAULT": "loss:hang:1,rollout:kill:2",
            "BUDGET_BENCH_LOSS": "30",
            "BUDGET_BENCH_ROLLOUT": "200",
        },
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_rows(tmp_path)
    assert [row["bench"] for row in rows] == ["loss", "rollout", "rollout"], rows
    lines = summary_lines(tmp_path)
    loss = next(line for line in lines if line.split()[1:2] == ["bench-loss"])
    rollout = next(line for line in lines if line.split()[1:2] == ["bench-rollout"])
    assert loss.startswith("FAILED") and "rc=124" in loss and "timed out after 30s" in loss, loss
    assert rollout.startswith("FAILED") and "rc=137" in rollout and "killed" in rollout, rollout
    assert "rows: " in loss and "rows: " in rollout and "no rows" not in loss + rollout
    assert {p.name for p in tmp_path.iterdir()} == OUT_FILES


def test_triton_rows_that_cannot_run_compiled_are_fallbacks_without_figures(tmp_path, monkeypatch):
    import bench_loss

    monkeypatch.setattr(
        bench_loss, "triton_problem", lambda device: "Triton unavailable (forced by the test)"
    )
    rows_path = tmp_path / "rows.jsonl"
    argv = [
        "--smoke",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--sweep",
        "--skip",
        "torch.compile",
        "--rows",
        str(rows_path),
    ]
    with pytest.raises(SystemExit) as exit_info:
        bench_loss.main(argv)
    assert exit_info.value.code == 1
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    ours = [row for row in rows if "[triton]" in row["name"] or row["name"].startswith("sweep:")]
    assert len(ours) == 5 + 12
    assert all(row["status"] == "fallback" and row["figures"] == {} for row in ours)
    torch_row = next(
        row for row in rows if row["name"] == "logits: ours rapo_loss (in place) [torch backend]"
    )
    assert torch_row["status"] == "ok" and torch_row["figures"]["ms"] > 0
    args = argparse.Namespace(rows=str(rows_path), step="bench-loss", bench="loss", pytest_log=None, rc=1,
                              seconds=3, limit=90, note="")  # fmt: skip
    lines = rowlog.step_lines(args)
    assert lines[0].startswith("FAILED") and "17 rows fallback/failed" in lines[0]
    assert sum(line.startswith("FAILED bench-loss/") and ": fallback: " in line for line in lines) == 17


def test_rollouts_that_left_the_engine_are_a_fallback():
    import bench_scale

    verdict = bench_scale.rollout_verdict
    assert verdict([{"backend": "engine", "cuda_graphs": True}], "cuda", True) is None
    assert verdict([{"backend": "engine", "cuda_graphs": False}], "cpu", True) is None
    assert verdict([{"backend": "engine", "cuda_graphs": False}], "cuda", False) is None
    generate = [{"backend": "engine", "cuda_graphs": True}, {"backend": "generate", "blockers": ["rope 'x'"]}]
    assert "1/2 rollouts ran on transformers generate (rope 'x')" in verdict(generate, "cuda", True)
    assert "without CUDA graphs" in verdict([{"backend": "engine", "cuda_graphs": False}], "cuda", True)
    assert "no rollout" in verdict([], "cuda", True)
    log = rowlog.RowLog(None, "scale", "test")
    row = bench_scale.Row(
        method="aesr1-rapo", status="fallback", step_s=1.0, error="rollouts ran on generate"
    )
    bench_scale.emit_method(log, row)
    assert log.rows[-1]["status"] == "fallback" and log.rows[-1]["figures"] == {}


def test_row_log_keeps_figures_of_ok_rows_only(tmp_path):
    log = rowlog.RowLog(tmp_path / "rows.jsonl", "loss", "cpu")
    log.emit("a", "ok", {"ms": 1.5, "bad": float("nan")})
    log.emit("b", "fallback", {"ms": 1.0}, note="torch ran")
    with pytest.raises(ValueError):
        log.emit("c", "great")
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert rows[0]["figures"] == {"ms": 1.5, "bad": None} and rows[1]["figures"] == {}
    assert [row["name"] for row in log.failures()] == ["b"]


# ---------------------------------------------------------------------------------------------------
# The pins and the wheel checks


def fake_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", metadata)
    return path


def test_the_pins_parse_and_leave_the_images_own_packages_alone():
    pins, problems = wheels.parse_pins()
    assert not problems
    names = {pin.name for pin in pins}
    assert {"trl", "datasets", "deepspeed", "liger-kernel", "pydantic", "pydantic-core"} <= names
    assert not names & set(wheels.PROTECTED)
    assert [pin.name for pin in pins if pin.sdist] == ["deepspeed"]


def test_bad_pins_are_reported(tmp_path):
    bad = tmp_path / "pins.txt"
    bad.write_text("trl>=1\ndill==0.4.1\ndill==0.4.1\ntorch==2.11.0\nfoo==1  # [weird]\n")
    _, problems = wheels.parse_pins(bad)
    text = "\n".join(problems)
    assert "not an exact" in text and "pinned twice" in text and "torch is the image's own" in text
    assert "unknown tags" in text


def test_wheel_check_holds_each_wheel_to_the_pins(tmp_path):
    pins, _ = wheels.parse_pins()
    version = {pin.name: pin.version for pin in pins}
    for pin in pins:
        requires = (f"pydantic-core=={version['pydantic-core']}", "typing-extensions>=4.14.1")
        fake_wheel(tmp_path, pin.name, pin.version, requires if pin.name == "pydantic" else ())
    fake_wheel(tmp_path, "aesr1", "0.1.0", ("numpy>=1.24,<3",))
    result = wheels.check(tmp_path)
    assert not result.errors and not result.missing and result.aesr1 is not None
    # a pydantic that wants another pydantic-core than the pinned one is refused
    for path in tmp_path.glob("pydantic-*.whl"):
        path.unlink()
    fake_wheel(tmp_path, "pydantic", version["pydantic"], ("pydantic-core==0.0.1",))
    result = wheels.check(tmp_path)
    assert any("requires pydantic-core==0.0.1" in error for error in result.errors), result.errors
    # two versions of one package
    fake_wheel(tmp_path, "dill", "0.3.9")
    assert any("2 wheels of dill" in error for error in wheels.check(tmp_path).errors)
