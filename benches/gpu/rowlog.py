"""Result rows of the benchmarks as JSON lines, written the moment each is measured.

Every benchmark (`benches/bench_loss.py`, `bench_rollout.py`, `bench_scale.py`) takes `--rows FILE`
and appends one JSON object per line there, flushed and fsynced before it goes on, so a step that
is killed by its timeout or crashes keeps every row it finished. `benches/gpu/run.sh` gives all of
them the same file, `$OUT/rows.jsonl`. Each row also goes to stdout as `ROW {...}`.

A row:

    bench     "loss" | "rollout" | "scale"
    name      what was measured (a method, a launch setting, a ratio)
    status    "ok"        the figures are a measurement of what `name` says
              "fallback"  the backend under test did not run (rollout engine -> transformers
                          `generate`, Triton -> torch, CUDA graphs off, kernels interpreted on a
                          GPU): a failure of the row, and it carries NO figures
              "skipped"   not run here, for the reason in `note` (a CPU rehearsal without a peer
                          package such as liger-kernel; on a GPU a missing peer is "failed")
              "failed"    it raised, or a check failed; `note` says why; no figures
    figures   {name: number} (only for "ok"; {} otherwise)
    note      free text (settings, the reason of a non-ok status)
    device    the device it ran on
    rehearsal true in `run.sh --rehearsal` (CPU, tiny shapes: the figures mean nothing)
    time      seconds since the epoch when the row was written

As a script it summarises one step for `run.sh`:

    python benches/gpu/rowlog.py step --rows rows.jsonl --step bench-loss --bench loss --rc 0 \
        --seconds 63 --limit 90

prints `ok`/`FAILED` for the step (rc, time, row counts) and one `FAILED` line per fallback or failed
row. Only the standard library is used: it runs before anything is installed.

Fault injection for the tests: `AESR1_ROWS_FAULT=kill:N` kills the process (SIGKILL) right after
its N-th row is written, `hang:N` makes it sleep until its timeout instead; prefixed by a bench
(`loss:hang:2,rollout:kill:2`) it applies to that bench only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
import time
from pathlib import Path

STATUSES = ("ok", "fallback", "skipped", "failed")
FIELDS = ("bench", "name", "status", "figures", "note", "device", "rehearsal", "time")


def rehearsal() -> bool:
    return os.environ.get("AESR1_REHEARSAL", "") not in ("", "0")


def _number(value):
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    return None


class RowLog:
    """Appends rows of one benchmark to a JSON-lines file (or only prints them when `path` is None)."""

    def __init__(self, path: str | Path | None, bench: str, device: str) -> None:
        self.path = Path(path) if path else None
        self.bench = bench
        self.device = device
        self.rows: list[dict] = []
        self._fault_kind, self._fault_after = "", None
        for entry in os.environ.get("AESR1_ROWS_FAULT", "").split(","):
            parts = entry.strip().split(":")
            if len(parts) == 3 and parts[0] != bench:
                continue
            if len(parts) in (2, 3) and parts[-1].isdigit() and parts[-2] in ("kill", "hang"):
                self._fault_kind, self._fault_after = parts[-2], int(parts[-1])
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, name: str, status: str, figures: dict | None = None, note: str = "") -> dict:
        """Write one row now (see the module docstring); figures are kept only for status "ok"."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        kept = {}
        if status == "ok":
            kept = {key: _number(value) for key, value in (figures or {}).items()}
        row = {"bench": self.bench, "name": name, "status": status, "figures": kept, "note": note,
               "device": self.device, "rehearsal": rehearsal(), "time": round(time.time(), 3)}  # fmt: skip
        line = json.dumps(row)
        print("ROW " + line, flush=True)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        self.rows.append(row)
        self._maybe_fault()
        return row

    def _maybe_fault(self) -> None:
        if self._fault_after is None or len(self.rows) != self._fault_after:
            return
        if self._fault_kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self._fault_kind == "hang":
            while True:
                time.sleep(60)

    def failures(self) -> list[dict]:
        return [row for row in self.rows if row["status"] in ("fallback", "failed")]


def peer_missing_status(device_type: str) -> str:
    """A peer package (liger-kernel, trl, deepspeed) that is not installed: a failure on a GPU, where
    run.sh installs it; skipped on CPU, where the rehearsal runs with whatever the venv has."""
    return "failed" if device_type == "cuda" else "skipped"


# ---------------------------------------------------------------------------------------------------
# Step summary for run.sh


def read_rows(path: Path) -> tuple[list[dict], int]:
    """Rows of a JSON-lines file and the number of lines that are not valid rows."""
    rows, bad = [], 0
    if not path.exists():
        return rows, bad
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict) and row.get("status") in STATUSES:
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def pytest_outcome(log: Path) -> str:
    """The counts line pytest printed last ("3 failed, 105 passed in 80.1s"), or ''."""
    if not log.exists():
        return ""
    pattern = re.compile(r"\d+ (passed|failed|error|errors|skipped|deselected|xfailed|xpassed)\b")
    last = ""
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if pattern.search(line):
            last = line.strip("= ").strip()
    return last


def step_lines(args) -> list[str]:
    timed_out = args.rc in (124, 137)
    why = []
    if timed_out:
        why.append(f"timed out after {args.limit}s" if args.rc == 124 else "killed (SIGKILL)")
    elif args.rc:
        why.append(f"exit status {args.rc}")
    failed_rows = []
    counts = ""
    if args.bench:
        rows, bad = read_rows(Path(args.rows))
        mine = [row for row in rows if row.get("bench") == args.bench]
        tally = {status: sum(row["status"] == status for row in mine) for status in STATUSES}
        counts = "rows: " + ", ".join(f"{n} {s}" for s, n in tally.items() if n) if mine else "no rows"
        if bad:
            counts += f", {bad} unreadable lines"
        if not mine:
            why.append("no rows written")
        failed_rows = [row for row in mine if row["status"] in ("fallback", "failed")]
        if failed_rows:
            why.append(f"{len(failed_rows)} rows fallback/failed")
    if args.pytest_log:
        outcome = pytest_outcome(Path(args.pytest_log))
        counts = outcome or "no pytest summary line"
    if args.note:
        counts = f"{counts}; {args.note}" if counts else args.note
    verdict = "FAILED" if why else "ok"
    head = f"{verdict:<7}{args.step:<15}{args.seconds:>4}s/{args.limit}s  rc={args.rc}  {counts}"
    if why:
        head += "  [" + "; ".join(why) + "]"
    lines = [head]
    for row in failed_rows:
        lines.append(f"FAILED {args.step}/{row['name']}: {row['status']}: {row.get('note', '')}"[:400])
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one step's summary lines for benches/gpu/run.sh")
    sub = parser.add_subparsers(dest="command", required=True)
    step = sub.add_parser("step")
    step.add_argument("--rows", default="rows.jsonl")
    step.add_argument("--step", required=True)
    step.add_argument("--bench", default=None, help="count this bench's rows")
    step.add_argument("--pytest-log", default=None, help="read pytest's outcome line from this log")
    step.add_argument("--rc", type=int, required=True)
    step.add_argument("--seconds", type=int, required=True)
    step.add_argument("--limit", type=int, required=True)
    step.add_argument("--note", default="")
    args = parser.parse_args(argv)
    print("\n".join(step_lines(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
