#!/usr/bin/env bash
# Run HERE (no GPU needed) before the device checks: fills .whl/ (git-ignored, carried to the device
# machine) with what its image lacks. The device has Python 3.12, torch, triton and transformers but
# no network, and no aesr1, trl, deepspeed, liger-kernel or datasets. Carry limit: 64 MiB in all.
#   bash benches/gpu/prepare.sh && du -sh .whl
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
mkdir -p .whl
rm -f .whl/aesr1-*.whl
maturin build --release --out .whl                     # abi3: one wheel for any Python >= 3.10
# Pure-Python or cp312 manylinux wheels, without dependencies (the image has torch & co).
pip download -q -d .whl --no-deps --python-version 3.12 --only-binary=:all: \
    "trl==1.16.*" "datasets>=3,<5" "dill<0.4.2" "multiprocess<0.70.20" "liger-kernel==0.8.5" \
    hjson pydantic pydantic-core annotated-types typing-inspection typing-extensions \
    "pytest>=8,<10" pluggy iniconfig "hypothesis>=6.100,<7" sortedcontainers "pytest-timeout>=2.3" \
    xxhash "accelerate>=1.0,<2" msgpack py-cpuinfo ninja einops
# DeepSpeed ships an sdist only: build a py3 wheel with this venv's torch (ops are JIT-built there).
if ! ls .whl/deepspeed-*.whl >/dev/null 2>&1; then
    pip wheel -q --no-deps --no-build-isolation -w .whl "deepspeed>=0.16,<1"
fi
ls -la .whl
