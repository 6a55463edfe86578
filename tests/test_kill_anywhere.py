"""`python -m aesr1.train` killed (SIGKILL) in the middle of each kind of save, then `--resume`d,
ends with exactly what an uninterrupted run produces: the same held-out rows, table, metrics rows
and final weights.

The kills come from outside the code under test: a worker process imports everything once and
forks one child per run; each child dies at the instant a named file is about to be opened for
writing (a Python audit hook) or has just been written by `torch.save` / safetensors, as a kill -9
from the scheduler would leave it. Run directly, this file is that worker.
"""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

SETTINGS = [
    "data.synthetic_n=40", "data.synthetic_image_size=32", "data.cold_start_per_bin=2", "data.max_eval_images=4",
    "model.dtype=float32", "report_to=none", "save_steps=2",
    "sft.global_batch_size=2", "sft.per_device_train_batch_size=2", "sft.num_train_epochs=2", "sft.max_completion_length=24",
    "sft.learning_rate=2e-3", "sft.lr_scheduler_type=linear",
    "rapo.num_generations=2", "rapo.mini_batch_size=4", "rapo.per_device_train_batch_size=4", "rapo.steps_per_generation=1",
    "rapo.max_steps=5", "rapo.max_completion_length=8", "rapo.learning_rate=1e-3",
    "eval.batch_size=4", "eval.max_completion_length=8", "eval.eval_steps=2",
]  # fmt: skip

# (what is being saved when the kill comes, file pattern, occurrence). Each run resumes the last.
KILLS = [
    ("initial model, after its config.json", "*initial*/generation_config.json", 1),
    ("sft/checkpoint-4, before any file of it", "*/sft/*checkpoint-4*/config.json", 1),
    ("sft/final, after its config.json", "*/sft/*final*/generation_config.json", 1),
    ("rapo/checkpoint-4, after its optimiser state", "*/rapo/*checkpoint-4*/optimizer.bin", 1),
    ("rapo/final, after its model.safetensors", "*/rapo/*final*/model.safetensors", 1),
]

# Wall-clock and whole-run summary values; every per-step value is compared.
UNCOMPARED = {"time", "train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss"}


def argv(out: Path, *extra: str) -> list[str]:
    sets = [a for s in SETTINGS for a in ("--set", s)]
    return ["--data", "synthetic", "--output-dir", str(out), "--no-progress", *sets, *extra]


def _rows(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in UNCOMPARED} for r in records]


def _weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(directory / "model.safetensors")


def test_killed_at_every_save_resumes_to_the_uninterrupted_result(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    runs = [{"argv": argv(reference), "kill": None}]
    runs += [
        {"argv": argv(killed, *([] if i == 0 else ["--resume"])), "kill": [pattern, nth]}
        for i, (_, pattern, nth) in enumerate(KILLS)
    ]
    runs.append({"argv": argv(killed, "--resume"), "kill": None})
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(runs))
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(
        [sys.executable, __file__, str(plan)], env=env, capture_output=True, text=True, timeout=1500
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    codes = json.loads(done.stdout.strip().splitlines()[-1])
    expected = [0] + [-signal.SIGKILL] * len(KILLS) + [0]
    labels = ["reference"] + [k[0] for k in KILLS] + ["last resume"]
    assert dict(zip(labels, codes, strict=True)) == dict(zip(labels, expected, strict=True)), done.stderr[
        -6000:
    ]

    assert json.loads((killed / "results.json").read_text()) == json.loads(
        (reference / "results.json").read_text()
    )
    assert (killed / "table.md").read_text() == (reference / "table.md").read_text()
    for stage in ("sft", "rapo"):
        assert _rows(killed / stage / f"{stage}_metrics.jsonl") == _rows(
            reference / stage / f"{stage}_metrics.jsonl"
        )
        ours, theirs = _weights(killed / stage / "final"), _weights(reference / stage / "final")
        assert ours.keys() == theirs.keys()
        assert all(ours[k].equal(theirs[k]) for k in ours), stage
    assert not list(killed.rglob("*.partial")), "a temporary save was left behind"


# ---------------------------------------------------------------------------------------------------
# The worker.

_kill: tuple[str, int] | None = None
_seen = 0


def _matches(path) -> bool:
    global _seen
    if _kill is None or not isinstance(path, (str, bytes, os.PathLike)):
        return False
    if not fnmatch.fnmatch(os.fsdecode(path), _kill[0]):
        return False
    _seen += 1
    return _seen == _kill[1]


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _audit(event: str, args: tuple) -> None:
    if event != "open" or len(args) < 3:
        return
    path, mode, flags = args[0], args[1], args[2]
    writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
        isinstance(flags, int) and flags > 0 and flags & (os.O_WRONLY | os.O_RDWR)
    )
    if writing and _matches(path):
        _die()


def _after_write(save, path_argument: int):
    """`save` that dies right after writing a matching file (libraries that write outside Python's
    `open`, so the audit hook does not see them)."""

    def wrapper(*args, **kwargs):
        result = save(*args, **kwargs)
        path = args[path_argument] if len(args) > path_argument else kwargs.get("f", kwargs.get("filename"))
        if _matches(path):
            _die()
        return result

    return wrapper


def _worker(plan_path: str) -> None:
    global _kill, _seen
    import safetensors.torch
    import torch

    # Before transformers and accelerate bind these names.
    torch.save = _after_write(torch.save, 1)
    safetensors.torch.save_file = _after_write(safetensors.torch.save_file, 1)
    import datasets  # noqa: F401  (imported once here, not in every child)
    import matplotlib.pyplot  # noqa: F401
    import scipy.stats  # noqa: F401
    import trl  # noqa: F401
    from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: F401

    import aesr1.train.pipeline  # noqa: F401
    import aesr1.train.rapo  # noqa: F401
    import aesr1.train.sft  # noqa: F401
    from aesr1.train.__main__ import main

    codes = []
    for run in json.loads(Path(plan_path).read_text()):
        pid = os.fork()
        if pid == 0:
            _kill = None if run["kill"] is None else (run["kill"][0], run["kill"][1])
            _seen = 0
            sys.addaudithook(_audit)
            try:
                code = main(run["argv"])
            except BaseException:  # noqa: BLE001 - reported through the exit code
                import traceback

                traceback.print_exc()
                code = 99
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        codes.append(os.waitstatus_to_exitcode(status))
    print(json.dumps(codes))


if __name__ == "__main__":
    _worker(sys.argv[1])
