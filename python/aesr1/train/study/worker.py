"""One study stage in its own process: `python -m aesr1.train.study.worker PARENT_PID`, reading
`(stage, study_dir, expected)` pickled on stdin (written by `runner.run_parallel`, the parent).

The worker dies with its parent (Linux `PR_SET_PDEATHSIG`), so a killed study leaves no stage
running behind the next `--resume`, which would otherwise run the same stage a second time in the
same directory.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGKILL when the parent exits; exit at once if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        sys.exit(f"study worker: the study process {parent} has gone")


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print(
            "usage: python -m aesr1.train.study.worker PARENT_PID  (stage pickled on stdin)", file=sys.stderr
        )
        return 2
    die_with_parent(int(argv[0]))
    stage, study_dir, expected = pickle.load(sys.stdin.buffer)
    from aesr1.train.study.runner import finish_stage

    finish_stage(stage, Path(study_dir), expected=expected)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
