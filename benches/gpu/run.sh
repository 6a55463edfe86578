#!/usr/bin/env bash
# Run ON THE DEVICE (the `run` tool, carry [".whl"]) after benches/gpu/prepare.sh:
#   bash benches/gpu/run.sh checks   # CUDA tests of the loss, log-probs and rollout engine + loss/rollout benches
#   bash benches/gpu/run.sh scale    # benches/bench_scale.py (issue 9), separately: it takes minutes
# Everything goes to $OUT (logs and JSON rows); each step has its own timeout so one hang does not
# cost the whole call. Untested so far: no GPU was lent to the session that wrote it.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/aesr1-out}
mkdir -p "$OUT"
# One wheel at a time: a wheel the image cannot take (e.g. an older glibc than the aesr1 wheel's
# manylinux tag) must not stop the others; failures are listed in $OUT/install.txt.
for wheel in .whl/*.whl; do
    python3 -m pip install -q --no-index --no-deps "$wheel" >> "$OUT/install.txt" 2>&1 \
        || echo "FAILED $wheel" | tee -a "$OUT/install.txt"
done
# DeepSpeed's JIT op builds reject the image's TORCH_CUDA_ARCH_LIST=9.0a.
export TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch, triton, transformers, aesr1._core; print(torch.__version__, triton.__version__, transformers.__version__)" \
    > "$OUT/versions.txt" 2>&1
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    local started=$(date +%s)
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "$name rc=$? $(( $(date +%s) - started ))s" | tee -a "$OUT/summary.txt"
}
case "${1:-checks}" in
checks)
    step pytest-cuda 240 python3 -m pytest -q -x tests/test_loss.py tests/test_loss_fused_linear.py \
        tests/test_token_logprobs.py tests/test_rollout_cuda.py
    step bench-loss 150 python3 benches/bench_loss.py --json "$OUT/loss.json"
    step bench-rollout 180 python3 benches/bench_rollout.py --greedy-check 64 --json "$OUT/rollout.json"
    ;;
scale)
    step bench-scale 560 python3 benches/bench_scale.py --json "$OUT/scale.json"
    ;;
*) echo "usage: run.sh checks|scale" >&2; exit 2 ;;
esac
cat "$OUT/summary.txt"
