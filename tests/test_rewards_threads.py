"""Results must not depend on the number of threads: compare a one-thread process, bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from aesr1 import _core, metrics, rewards

    rng = np.random.default_rng(7)
    n, k = 300, 8
    gt = np.round(rng.random(n), 2)
    pred = np.round(np.clip(gt[:, None] + 0.15 * rng.standard_normal((n, k)), 0, 1), 2)
    pred[rng.random((n, k)) < 0.05] = np.nan
    out = {"threads": _core.num_threads(), "saturated": _core.host_saturated()}
    for ties in ("strict", "half"):
        r = rewards.rapo({"pred": pred, "gt": gt}, ties=ties)
        out[ties] = [v.hex() for v in np.concatenate([r.total, r.rank, r.advantages])]
    x = rng.random(200_000)
    y = np.round(x + 0.3 * rng.standard_normal(x.size), 2)
    e = metrics.evaluate(x, y)
    out["metrics"] = [float(v).hex() for v in (e.plcc, e.srcc, e.krcc)]
    texts = [f"<answer>0.{i % 100:02d}</answer>" for i in range(3000)]
    out["parse"] = [v.hex() for v in rewards.parse_scores(texts)]
    out["saturated"] = [out["saturated"], _core.host_saturated()]
    out["os_threads"] = len(__import__("os").listdir("/proc/self/task"))
    json.dump(out, sys.stdout)
    """
)


def run(threads: int, adaptive: bool = False) -> dict:
    # Not adaptive by default: on a loaded test host the parallel paths would run serially.
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), AESR1_ADAPTIVE_THREADS=str(int(adaptive)))
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


def test_results_do_not_depend_on_thread_count():
    one, three = run(1), run(3)
    assert one.pop("threads") == 1 and three.pop("threads") == 3
    for run_ in (one, three):
        run_.pop("saturated"), run_.pop("os_threads")
    assert one == three


def _online_cpus() -> int:
    try:
        with open("/sys/devices/system/cpu/online") as handle:
            text = handle.read().strip()
    except OSError:
        return 0
    return sum(
        int(b) - int(a) + 1 if "-" in p else 1 for p in text.split(",") for a, _, b in [p.partition("-")]
    )


def _spin() -> None:
    while True:
        pass


@pytest.mark.skipif(not 0 < _online_cpus() <= 16, reason="needs Linux /sys and at most 16 CPUs to saturate")
def test_saturated_host_runs_serially_with_the_same_results():
    """With a spinning process on every CPU the host has no core to spare: large inputs then run
    on one thread, and give the same bits as a one-thread process."""
    import multiprocessing

    one = run(1)
    spinners = [
        multiprocessing.get_context("spawn").Process(target=_spin, daemon=True) for _ in range(_online_cpus())
    ]
    for spinner in spinners:
        spinner.start()
    try:
        time.sleep(0.5)
        three, not_adaptive = run(3, adaptive=True), run(3)
    finally:
        for spinner in spinners:
            spinner.terminate()
            spinner.join()
    assert three.pop("threads") == 3
    assert three.pop("saturated") == [True, True]
    # The large inputs ran on a one-thread pool of their own: one OS thread more.
    assert three.pop("os_threads") == not_adaptive.pop("os_threads") + 1
    for run_ in (one, not_adaptive):
        run_.pop("threads"), run_.pop("saturated"), run_.pop("os_threads", None)
    assert one == three == not_adaptive


FORK_SCRIPT = textwrap.dedent(
    """
    import os
    import numpy as np
    from aesr1 import metrics, rewards

    rng = np.random.default_rng(0)
    gt, pred = rng.random(256), rng.random((256, 8))
    parent = rewards.rapo({"pred": pred, "gt": gt}).total  # the parent's pool is now running
    x = rng.random(300_000)
    y = x + rng.random(x.size)
    parent_metrics = metrics.evaluate(x, y)

    def child_ok():
        same = np.array_equal(rewards.rapo({"pred": pred, "gt": gt}).total, parent)
        return same and metrics.evaluate(x, y) == parent_metrics

    pid = os.fork()
    if pid == 0:
        grandchild = os.fork()  # a fork of a fork gets its own pool again
        if grandchild == 0:
            os._exit(0 if child_ok() else 1)
        _, status = os.waitpid(grandchild, 0)
        os._exit(0 if child_ok() and status == 0 else 1)
    _, status = os.waitpid(pid, 0)
    print(status)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX-only")
def test_forked_children_compute_without_deadlock():
    """fork() keeps rayon's pool but not its threads; children (DataLoader workers) must not hang."""
    result = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "0"
