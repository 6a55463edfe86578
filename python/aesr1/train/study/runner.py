"""Runs a study's stages, each through `aesr1.train.pipeline.run_pipeline`: in this process one after
another, or (`jobs` > 1) up to `jobs` at once, each in its own worker process
(`aesr1.train.study.worker`) with the host's CPUs split between them.

Small models on CPU use a second core poorly (one 2-thread run spends much of its time in
synchronisation), so on a 2-core host two 1-thread runs finish more work per hour than one 2-thread
run. The results do not depend on it: a stage's numbers are the same at any thread count up to
float summation order, and each stage still runs alone in its process.

A stage is run with `resume=True`, so a stage a kill interrupted continues from its last
checkpoint (the pipeline's own resume), and a stage whose `STUDY_DONE.json` exists is skipped. A
RAPO stage's directory is first filled with hard links to its cold start's files (`prepare_rapo`),
published whole by one rename, so the pipeline finds a finished SFT stage there. Each stage's
output (pipeline prints, trl and transformers logs) goes to `<study>/logs/<stage>.log`; the terminal
shows one progress bar over the stages. `<study>/study_log.jsonl` records each stage's start and
end (what a resumed study ran again, and how long each stage took).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from aesr1.jsonio import dumps
from aesr1.train.durable import atomic_write_text, remove_tree, staging_path
from aesr1.train.study.plan import DONE, Plan, Stage

#: The files of a cold start a RAPO run starts from (directories linked file by file).
COLD_START_FILES = ("initial", "sft/final", "aescot.jsonl", "aescot.meta.json", "aescot.report.json")


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link `source` (a file or a directory tree) to `target`; a copy where links fail
    (another file system). Written files are replaced by rename, never changed in place, so a link
    shares nothing a run could alter."""
    if source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        for entry in source.iterdir():
            _link_tree(entry, target / entry.name)
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def prepare_rapo(stage: Stage) -> None:
    """Give a RAPO stage's directory its cold start's model, data and held-out rows, and its own
    `config.json`, unless it has them already. Written under a temporary name and renamed, so a
    kill leaves either nothing or a whole directory."""
    directory, cold = stage.directory, stage.cold.directory
    if (directory / "config.json").is_file():
        return
    staged = staging_path(directory)
    remove_tree(staged)
    staged.mkdir(parents=True)
    for name in COLD_START_FILES:
        if (cold / name).exists():
            _link_tree(cold / name, staged / name)
    rows = json.loads((cold / "results.json").read_text()) if (cold / "results.json").is_file() else {}
    atomic_write_text(
        staged / "results.json", dumps({k: v for k, v in rows.items() if k != "rapo"}, indent=1)
    )
    atomic_write_text(staged / "config.json", dumps(stage.config.to_dict(), indent=1))
    if directory.exists():  # an empty leftover: a directory with files always has config.json
        remove_tree(directory)
    os.replace(staged, directory)


def reset_process_state() -> None:
    """Forget what the previous stage left in this process: accelerate's process-wide state (a trl
    trainer leaves its mixed precision there, which would autocast the next stage's models)."""
    import gc

    state = sys.modules.get("accelerate.state")
    if state is not None:
        state.AcceleratorState._reset_state(reset_partial_state=True)
        state.GradientState._reset_state()
    gc.collect()


def expected_eval(stage: Stage, row: str) -> None:
    """Score the held-out images with `row`'s final model ("sft" or "rapo") in `expected` mode and
    save predictions and ground truth as `expected_<row>.json` (skipped when it exists)."""
    from aesr1.score import Scorer
    from aesr1.train.data import load_items

    path = stage.directory / f"expected_{row}.json"
    model_dir = stage.directory / row / "final"
    if path.is_file() or not (model_dir / "COMPLETE").is_file():
        return
    config = stage.config
    _, test = load_items(config, stage.directory)
    scorer = Scorer(
        str(model_dir), mode="expected", max_new_tokens=config.eval.max_completion_length,
        batch_size=config.eval.batch_size, seed=config.seed,
    )  # fmt: skip
    results = scorer.score([item.image for item in test])
    pred = [r.score for r in results]
    atomic_write_text(path, dumps({"pred": pred, "gt": [item.score for item in test]}))


def log_path(stage: Stage) -> Path:
    """`<study>/logs/<stage>.log` (outside the run directory, which the pipeline wants to itself)."""
    return stage.directory.parent.parent / "logs" / f"{stage.key}.log"


@contextlib.contextmanager
def _logged(stage: Stage):
    path = log_path(stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(path, "a", encoding="utf-8") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        yield


def run_stage(stage: Stage, *, expected: bool = False) -> tuple[float, float]:
    """Run (or continue) one stage; returns its wall time and the process's CPU time (all threads)
    in seconds."""
    from aesr1.train.pipeline import run_pipeline

    started, cpu = time.time(), time.process_time()
    if stage.kind == "rapo":
        prepare_rapo(stage)
    reset_process_state()
    stages = ("sft",) if stage.kind == "cold" else ("rapo",)
    with _logged(stage):
        run_pipeline(stage.config, resume=True, stages=stages)
        if expected:
            expected_eval(stage, "sft" if stage.kind == "cold" else "rapo")
    reset_process_state()
    return time.time() - started, time.process_time() - cpu


def _log_event(study_dir: Path, **event) -> None:
    event["time"] = round(time.time(), 3)
    with open(study_dir / "study_log.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(event) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def finish_stage(stage: Stage, study_dir: Path, *, expected: bool = False) -> None:
    """Run one stage, then mark it done: its `STUDY_DONE.json` (what resume trusts), then the
    "done" event of `study_log.jsonl`."""
    _log_event(study_dir, event="start", stage=stage.key, label=stage.label(), pid=os.getpid())
    seconds, cpu_seconds = run_stage(stage, expected=expected)
    marker = {"seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1), "kind": stage.kind,
              "label": stage.label(), "uses": [list(use) for use in stage.uses]}  # fmt: skip
    atomic_write_text(stage.directory / DONE, dumps(marker, indent=1))
    _log_event(study_dir, event="done", stage=stage.key, seconds=round(seconds, 1),
               cpu_seconds=round(cpu_seconds, 1))  # fmt: skip


def threads_per_job(jobs: int) -> int:
    """The CPUs this process may use, shared out between `jobs` workers (at least one each)."""
    return max(1, len(os.sched_getaffinity(0)) // jobs)


def run_plan(
    plan: Plan, study_dir: str | Path, *, expected: bool = False, progress: bool = True, jobs: int = 1
) -> None:
    """Run every unfinished stage of `plan`, with a progress bar over stages: in plan order in this
    process (`jobs` 1), or up to `jobs` at a time in worker processes (`run_parallel`)."""
    from tqdm.auto import tqdm

    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    study_dir = Path(study_dir)
    todo = [s for s in plan.stages if not s.done]
    if expected:  # stages finished by a study run without expected-mode scoring
        for stage in plan.stages:
            if stage.done:
                with _logged(stage):
                    expected_eval(stage, "sft" if stage.kind == "cold" else "rapo")
    bar = tqdm(
        total=len(plan.stages), initial=len(plan.stages) - len(todo), desc="study", unit="run",
        disable=not progress, file=sys.__stderr__, dynamic_ncols=True,
        mininterval=0.2 if sys.__stderr__.isatty() else 30,
    )  # fmt: skip
    try:
        if jobs == 1:
            for stage in todo:
                bar.set_postfix_str(stage.label())
                finish_stage(stage, study_dir, expected=expected)
                bar.update(1)
        else:
            run_parallel(todo, study_dir, expected=expected, jobs=jobs, bar=bar)
    finally:
        bar.close()


def _start_worker(stage: Stage, study_dir: Path, *, expected: bool, threads: int) -> subprocess.Popen:
    """A worker process running `stage` with `threads` threads; its stdout and stderr (C-level
    output included) go to the stage's log."""
    path = log_path(stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               RAYON_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")  # fmt: skip
    with open(path, "ab") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "aesr1.train.study.worker", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    worker.stdin.write(pickle.dumps((stage, str(study_dir), expected)))
    worker.stdin.close()
    return worker


def run_parallel(todo: list[Stage], study_dir: Path, *, expected: bool, jobs: int, bar) -> None:
    """Run `todo` with up to `jobs` worker processes at once. A RAPO stage waits for its cold start;
    cold starts go first (each unblocks RAPO runs), otherwise plan order. When a stage fails, no
    further stage starts, the running ones finish (nothing is lost), and a RuntimeError names the
    failed stage and its log. When this process is interrupted its workers are stopped (each also
    dies with it: `worker.py`), and `--resume` continues them from their checkpoints."""
    threads = threads_per_job(jobs)
    pending, running, failed, last_shown = list(todo), {}, [], ""
    try:
        while pending or running:
            while not failed and len(running) < jobs:
                ready = [s for s in pending if s.kind == "cold" or s.cold.done]
                if not ready:
                    break
                stage = min(ready, key=lambda s: s.kind != "cold")
                pending.remove(stage)
                running[_start_worker(stage, study_dir, expected=expected, threads=threads)] = stage
            if not running:
                break
            shown = "; ".join(stage.label() for stage in running.values())
            if shown != last_shown:  # a refresh per poll would flood a log that holds the bar
                bar.set_postfix_str(last_shown := shown)
            time.sleep(0.25)
            for worker in [w for w in running if w.poll() is not None]:
                stage = running.pop(worker)
                if worker.returncode != 0 or not stage.done:
                    failed.append(f"{stage.label()} exited with {worker.returncode} (log: {log_path(stage)})")
                else:
                    bar.update(1)
    except BaseException:
        for worker in running:
            worker.send_signal(signal.SIGTERM)
        for worker in running:
            worker.wait()
        raise
    if failed:
        raise RuntimeError("study stage failed: " + "; ".join(failed))
    if pending:  # only when a cold start failed above; listed for completeness
        raise RuntimeError(f"{len(pending)} stages could not start: their cold start did not finish")
