"""DeepSpeed's collectives on gloo alone, for the 2-process CPU tests.

On a CPU accelerator DeepSpeed JIT-compiles a shared-memory allreduce op (`deepspeed_shm_comm`) in
every fresh environment: about 2.5 minutes of g++ on a 2-core machine, more than the tests that use
it take. It is a CPU-only shortcut for the same sums gloo computes (GPU runs use NCCL), so these
tests skip building it and ZeRO-3's collectives run on torch.distributed's gloo backend.

    python tests/workers/gloo_allreduce.py -m aesr1.train ...   # `python -m aesr1.train ...` this way
"""

from __future__ import annotations

import runpy
import sys


def use_gloo_allreduce() -> None:
    """Make DeepSpeed's torch backend find no shared-memory op, so it never builds one."""
    import importlib

    # `deepspeed.comm.torch` as an attribute is the torch package deepspeed.comm imports; the
    # submodule is only reachable through the import system.
    backend = importlib.import_module("deepspeed.comm.torch")
    backend.build_shm_op = lambda: None


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "-m":
        raise SystemExit("usage: gloo_allreduce.py -m MODULE [ARGS...]")
    use_gloo_allreduce()
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
