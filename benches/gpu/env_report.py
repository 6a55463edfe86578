"""What the benchmarks ran on, for $OUT/env.txt (benches/gpu/run.sh): the GPU as nvidia-smi reports it,
Python, torch/CUDA, the versions of the packages the benchmarks use, the Triton mode, and `pip list`
(so the next run knows the image's versions without spending device time on it).

    python benches/gpu/env_report.py
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata

PACKAGES = ("torch", "triton", "transformers", "accelerate", "trl", "datasets", "deepspeed", "liger-kernel",
            "peft", "pydantic", "pydantic-core", "fsspec", "typing-extensions", "numpy", "pytest",
            "pytest-xdist", "pytest-timeout", "hypothesis", "flash-attn", "vllm")  # fmt: skip


def run(command: list[str], timeout: float = 30) -> str:
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        return (proc.stdout + proc.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"({' '.join(command)} failed: {error})"


def main() -> None:
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}")
    print(f"host: {platform.node()} {platform.machine()} {platform.platform()}, {os.cpu_count()} CPUs")
    print(f"python: {sys.version.split()[0]} at {sys.executable}")
    print(f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')!r} AESR1_REHEARSAL="
          f"{os.environ.get('AESR1_REHEARSAL', '')!r} PYTHONPATH={os.environ.get('PYTHONPATH', '')!r}")  # fmt: skip
    if shutil.which("nvidia-smi"):
        print(run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.sm,"
                   "power.limit,temperature.gpu,utilization.gpu", "--format=csv"]))  # fmt: skip
    else:
        print("nvidia-smi: not found (no NVIDIA GPU here)")
    for name in PACKAGES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "not installed"
        print(f"  {name:<18} {version}")
    try:
        import torch

        print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}")
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            print(f"  {props.name}: {props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs, "
                  f"capability {props.major}.{props.minor}")  # fmt: skip
    except Exception as error:  # noqa: BLE001  (the report must not stop here)
        print(f"torch: import failed: {error}")
    try:
        import aesr1

        print(f"aesr1 {aesr1.__version__} from {os.path.dirname(aesr1.__file__)}")
    except Exception as error:  # noqa: BLE001
        print(f"aesr1: import failed: {error}")
    print("\n$ pip list")
    print(run([sys.executable, "-m", "pip", "list", "--disable-pip-version-check"], timeout=60))


if __name__ == "__main__":
    main()
