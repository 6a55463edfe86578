"""Speed of aesr1's native rewards and metrics against the obvious Python alternatives.

    python benches/bench_rewards.py            # all figures (the loop baseline takes ~10-20 s)
    python benches/bench_rewards.py --quick    # fewer repeats, loop baseline timed once

Prints, from one run:

* `aesr1.rewards.rapo` (rank + abs reward, total, advantages) against the vectorised NumPy
  float64 implementation used as the tests' reference (`tests/reference.py`, Φ from SciPy's
  ndtr; it evaluates both terms of Eq. 4, i.e. Φ(z) and Φ(-z)), at N = 1024 images x K = 16
  completions and at the paper's N = 128, K = 4; and, for comparison, against a NumPy version
  using the same one-Φ-per-pair simplification as aesr1;
* `rapo` against a loop implementation shaped like the released Aes-R1 reward code: Python loops
  over torch scalar operations, at N = 128, K = 4;
* `aesr1.metrics.srcc` / `krcc` against `scipy.stats.spearmanr` / `kendalltau` at n = 10^6;
* srcc / krcc at n = 10^6 in child processes with 1 and with 2 native threads
  (`RAYON_NUM_THREADS`), SciPy timed alongside, as the host is, on a busy host (a spinning
  process pinned to one core) and on a saturated one (a spinning job, in a session of its own, on
  every core; once more with AESR1_ADAPTIVE_THREADS=0, i.e. 2 threads regardless), with the spread
  of the per-round 1-thread / 2-thread ratios (`--threads-only` runs just these rows,
  `--busy-only` all but the idle host's).

Times are the best of several repeats, taken alternately for aesr1 and its baseline so both see
the same background load (the machine may be shared; the best run is the least disturbed one);
the thread rows give medians, from rounds that run both thread counts in alternating order.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
import timeit
from pathlib import Path

import numpy as np
from scipy.special import ndtr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import reference  # noqa: E402  (the NumPy float64 reference of the tests)

from aesr1 import _core, metrics, rewards  # noqa: E402


def calls_per_repeat(fn, min_seconds: float) -> int:
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, math.ceil(min_seconds / once))


def compare(ours, baseline, repeats: int, min_seconds: float = 0.2) -> tuple[float, float]:
    """Best per-call times of `ours` and `baseline`, measured in alternating repeats so that both
    see the same background load; each repeat runs long enough to average out timer resolution."""
    n_ours, n_base = calls_per_repeat(ours, min_seconds), calls_per_repeat(baseline, min_seconds)
    t_ours, t_base = math.inf, math.inf
    for _ in range(repeats):
        t_ours = min(t_ours, timeit.timeit(ours, number=n_ours) / n_ours)
        t_base = min(t_base, timeit.timeit(baseline, number=n_base) / n_base)
    return t_ours, t_base


def batch(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ground truths in [0, 1]; K predictions each, truth plus noise, as a model's 2-decimal answers."""
    rng = np.random.default_rng(seed)
    gt = rng.random(n)
    pred = np.round(np.clip(gt[:, None] + 0.1 * rng.standard_normal((n, k)), 0.0, 1.0), 2)
    return pred, gt


def numpy_rapo_one_phi(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """The same total in NumPy with the p_c ∈ {0, 1} simplification aesr1 uses: one Φ and one
    square root per pair (sqrt(Φ(±z))) instead of evaluating both terms of Eq. 4."""
    count, mean, var = reference.group_stats(pred)
    z = (pred[:, :, None] - mean[None, None, :]) / np.sqrt(
        var[:, None, None] + var[None, None, :] + reference.GAMMA
    )
    sign = np.where(gt[:, None] >= gt[None, :], 1.0, -1.0)[:, None, :]
    term = np.sqrt(ndtr(sign * z))
    partner = (count[None, :] >= 1) & ~np.eye(len(gt), dtype=bool)
    size = partner.sum(axis=1)[:, None]
    rank = np.where(partner[:, None, :], term, 0.0).sum(axis=2) / np.maximum(size, 1)
    rank = np.where(np.isnan(pred) | (size == 0), 0.0, rank)
    total = rank + reference.abs_reward(pred, gt[:, None])
    return reference.group_advantages(total)


def released_style_rapo(pred: list[list[float]], gt: list[float]) -> list[float]:
    """RAPO rewards the way a straightforward PyTorch reward function computes them: Python loops
    over images, completions and partners, every formula a torch scalar operation."""
    import torch

    normal = torch.distributions.Normal(
        torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    )
    gamma, sigma, eps = 1e-6, 0.1, 1e-5
    n = len(pred)
    rewards_out = []
    for i in range(n):
        preds_i = torch.tensor(pred[i], dtype=torch.float64)
        for k in range(len(pred[i])):
            o = preds_i[k]
            total = torch.tensor(0.0, dtype=torch.float64)
            for j in range(n):
                if j == i:
                    continue
                preds_j = torch.tensor(pred[j], dtype=torch.float64)
                mu_j = preds_j.mean()
                z = (o - mu_j) / torch.sqrt(preds_i.var() + preds_j.var() + gamma)
                p = normal.cdf(z)
                pc = 1.0 if gt[i] >= gt[j] else 0.0
                total = total + torch.sqrt(pc * p) + torch.sqrt((1 - pc) * (1 - p))
            r_rank = total / (n - 1)
            r_abs = torch.exp(-0.5 * (torch.abs(o - gt[i]) / sigma) ** 2) + eps
            rewards_out.append(float(r_rank + r_abs))
    return rewards_out


def metric_inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.random(1_000_000)
    return x, x + 0.3 * rng.standard_normal(x.size)


def best_of(fn, repeats: int) -> float:
    fn()
    return min(timeit.repeat(fn, number=1, repeat=repeats))


def thread_worker(repeats: int) -> None:
    """Child process of `thread_rows`: every srcc and krcc time on this process's pool."""
    import json

    x, y = metric_inputs()
    out: dict[str, object] = {"threads": _core.num_threads()}
    for name, fn in (("srcc", metrics.srcc), ("krcc", metrics.krcc)):
        fn(x, y)
        out[name] = timeit.repeat(lambda fn=fn: fn(x, y), number=1, repeat=repeats)
    print(json.dumps(out))


def spin(cpu: int, own_session: bool) -> None:
    # Pinned so that exactly the chosen cores are taken, whichever core the timed threads land on.
    # In a session of its own the spinner is another job to the scheduler (a Linux autogroup, as a
    # container or a service would be a cgroup), which shares CPU time per group, not per thread.
    if own_session and hasattr(os, "setsid"):
        os.setsid()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    while True:
        pass


LOADS = {
    "idle": "this host",
    "one-core": "busy host (one core taken)",
    "every-core": "saturated host (every core taken by another job)",
}


def thread_rows(
    rounds: int, repeats: int, load: str, adaptive: bool = True
) -> tuple[list[tuple[str, float, float]], list[str]]:
    """srcc / krcc at n = 10^6 with 1 and 2 native threads (the pool size is fixed per process, so
    each runs in a fresh process), and SciPy in this one, under `load` (a key of `LOADS`): an idle
    host, a spinning process pinned to one core, or one spinning job on every core. `adaptive=False`
    sets AESR1_ADAPTIVE_THREADS=0 (2 threads even when the host has no core to spare). Each round
    runs both thread counts, in alternating order, and SciPy, so that background load hits all
    alike. Returns rows of median times and, per metric, the spread of the per-round ratios
    (1-thread median / 2-thread median: above 1, 2 threads were faster)."""
    import json
    import multiprocessing
    import subprocess

    from scipy import stats

    x, y = metric_inputs()
    cpus = (
        sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count()))
    )
    taken = {"idle": [], "one-core": cpus[:1], "every-core": cpus}[load]
    spinners = [
        multiprocessing.get_context("spawn").Process(
            target=spin, args=(cpu, load == "every-core"), daemon=True
        )
        for cpu in taken
    ]
    for spinner in spinners:
        spinner.start()
    time.sleep(0.2 if spinners else 0)
    times = {(t, m): [] for t in (1, 2) for m in ("srcc", "krcc")}
    ratios = {"srcc": [], "krcc": []}
    scipy_times = {"srcc": [], "krcc": []}
    try:
        for r in range(rounds):
            medians = {}
            for threads in (1, 2) if r % 2 == 0 else (2, 1):
                env = dict(
                    os.environ, RAYON_NUM_THREADS=str(threads), AESR1_ADAPTIVE_THREADS=str(int(adaptive))
                )
                cmd = [sys.executable, __file__, "--thread-worker", "--repeats", str(repeats)]
                got = json.loads(
                    subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
                )
                assert got["threads"] == threads
                for m in ("srcc", "krcc"):
                    times[threads, m].extend(got[m])
                    medians[threads, m] = float(np.median(got[m]))
            for m in ("srcc", "krcc"):
                ratios[m].append(medians[1, m] / medians[2, m])
            scipy_times["srcc"].append(best_of(lambda: stats.spearmanr(x, y), 1))
            scipy_times["krcc"].append(best_of(lambda: stats.kendalltau(x, y), 1))
    finally:
        for spinner in spinners:
            spinner.terminate()
            spinner.join()
    host = LOADS[load] + ("" if adaptive else ", AESR1_ADAPTIVE_THREADS=0")
    rows, spreads = [], []
    for m, scipy_name in (("srcc", "spearmanr"), ("krcc", "kendalltau")):
        scipy_median = float(np.median(scipy_times[m]))
        for threads in (1, 2):
            name = f"{host}: {m} n=1e6, {threads} thread(s) vs scipy.stats.{scipy_name} (medians)"
            rows.append((name, float(np.median(times[threads, m])), scipy_median))
        q = np.quantile(ratios[m], [0.0, 0.25, 0.5, 0.75, 1.0])
        spreads.append(
            f"{host}: {m} 1-thread / 2-thread time over {rounds} rounds of {repeats} calls: median "
            f"{q[2]:.2f}, quartiles {q[1]:.2f}-{q[3]:.2f}, range {q[0]:.2f}-{q[4]:.2f} "
            "(above 1: 2 threads faster)"
        )
    return rows, spreads


def print_rows(rows: list[tuple[str, float, float]], notes: list[str] = ()) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"\n{'benchmark':<{width}}  {'aesr1':>11}  {'baseline':>11}  {'speed-up':>9}")
    for name, ours, theirs in rows:
        print(f"{name:<{width}}  {fmt(ours):>11}  {fmt(theirs):>11}  {theirs / ours:>8.1f}x")
    for note in notes:
        print(note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads-only", action="store_true", help="only the 1- vs 2-thread rows")
    parser.add_argument("--busy-only", action="store_true", help="only the busy-host rows")
    parser.add_argument("--rounds", type=int, help="rounds of the thread rows (default 8, --quick 3)")
    parser.add_argument("--thread-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.thread_worker:
        thread_worker(args.repeats)
        return
    repeats = 3 if args.quick else 7
    load = os.getloadavg() if hasattr(os, "getloadavg") else None

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, native threads {_core.num_threads()}"
    )
    print(f"python {platform.python_version()}, numpy {np.__version__}, aesr1 {_core.__version__}")
    if load is not None:
        print(f"load average at start (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    rows = []
    rounds = args.rounds or (3 if args.quick else 8)
    thread_loads = [("idle", True), ("one-core", True), ("every-core", True), ("every-core", False)]
    if args.busy_only or args.threads_only:
        rows, notes = [], []
        for load, adaptive in thread_loads[0 if args.threads_only else 1 :]:
            more_rows, more_notes = thread_rows(rounds, 3, load, adaptive)
            rows.extend(more_rows)
            notes.extend(more_notes)
        print_rows(rows, notes)
        return

    for n, k in [(1024, 16), (128, 4)]:
        pred, gt = batch(n, k)
        ours, numpy_time = compare(
            lambda pred=pred, gt=gt: rewards.rapo({"pred": pred, "gt": gt}),
            lambda pred=pred, gt=gt: reference.rapo(pred, gt),
            repeats,
        )
        got = rewards.rapo({"pred": pred, "gt": gt}).total
        assert np.max(np.abs(got - reference.rapo(pred, gt)["total"].ravel())) <= 1e-12
        rows.append((f"rapo N={n} K={k} vs NumPy float64", ours, numpy_time))
        ours_again, one_phi_time = compare(
            lambda pred=pred, gt=gt: rewards.rapo({"pred": pred, "gt": gt}),
            lambda pred=pred, gt=gt: numpy_rapo_one_phi(pred, gt),
            repeats,
        )
        want = reference.rapo(pred, gt)["advantages"]
        assert np.max(np.abs(numpy_rapo_one_phi(pred, gt) - want)) <= 1e-9
        rows.append(("  same, NumPy with one Phi per pair", ours_again, one_phi_time))

    pred, gt = batch(128, 4)
    ours = math.inf
    loop_times = []
    for _ in range(1 if args.quick else 2):
        ours = min(ours, compare(lambda: rewards.rapo({"pred": pred, "gt": gt}), lambda: None, repeats)[0])
        start = time.perf_counter()
        loop = released_style_rapo(pred.tolist(), gt.tolist())
        loop_times.append(time.perf_counter() - start)
    assert np.max(np.abs(np.array(loop) - rewards.rapo({"pred": pred, "gt": gt}).total)) < 1e-9
    rows.append(("rapo N=128 K=4 vs Python/torch loops", ours, min(loop_times)))

    from scipy import stats

    x, y = metric_inputs()
    metric_repeats = 3 if args.quick else 5
    for name, ours_fn, scipy_fn in [
        ("srcc n=1e6 vs scipy.stats.spearmanr", metrics.srcc, stats.spearmanr),
        ("krcc n=1e6 vs scipy.stats.kendalltau", metrics.krcc, stats.kendalltau),
    ]:
        ours, theirs = compare(lambda f=ours_fn: f(x, y), lambda f=scipy_fn: f(x, y), metric_repeats, 0.0)
        rows.append((name, ours, theirs))
    notes = []
    for load, adaptive in thread_loads:
        more_rows, more_notes = thread_rows(rounds, 3, load, adaptive)
        rows.extend(more_rows)
        notes.extend(more_notes)
    print_rows(rows, notes)


def fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


if __name__ == "__main__":
    main()
