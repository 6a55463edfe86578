#!/usr/bin/env bash
# The whole GPU check in ONE command, on the device (the `run` tool, carry [".whl"], timeout_s 600),
# after benches/gpu/prepare.sh has filled .whl/ here:
#
#   bash benches/gpu/run.sh
#
# Steps, each under its own `timeout`; a step may also use what earlier steps left of their budget,
# and the budgets sum to 530 s, so the command ends inside 9 minutes:
#   install        45 s  the carried wheels the image lacks (benches/gpu/wheels.py: pins.txt, pip's
#                        resolver without an index, the image's torch/transformers/triton/accelerate kept)
#   env            15 s  GPU, versions, pip list                                   -> env.txt
#   pytest-cuda   100 s  the CUDA cases (-k cuda) of every test file with CUDA skips, no -x: every
#                        failure shows                                              -> pytest.log
#   bench-loss     90 s  RAPO loss fwd+bwd: ours (Triton) vs eager/torch.compile/Liger, the
#                        fused-linear path vs its 3 GEMMs, a launch sweep (programs per SM x stages),
#                        each beside its bandwidth (or matrix-rate) floor on the H200
#   bench-rollout 130 s  the decode engine (CUDA graphs, eager) vs transformers generate (dynamic,
#                        static cache), 3B Qwen2.5-VL random init, 32 x (256 + 512); greedy check
#   bench-scale   150 s  aesr1 RAPO vs trl GRPO (then SFT), 3B, ZeRO-3, 1 warm-up + 1 timed step
# Benchmarks append each result row to rows.jsonl the moment it is measured (benches/gpu/rowlog.py
# says what a row holds), so a step killed by its timeout keeps what it finished. A backend that
# fell back (engine -> generate, Triton -> torch, graphs off) is a "fallback" row without figures
# and a FAILED line in summary.txt, never a figure.
#
# $OUT (the tool's folder; default /tmp/aesr1-out) gets exactly these 6 files, whatever fails:
#   summary.txt  one line per step (ok/FAILED, seconds, limit, exit status, rows) + FAILED rows
#   install.txt  the install plan, pip's output, pip check
#   env.txt      what it ran on
#   pytest.log   the CUDA tests
#   steps.log    the benchmarks' output, one after the other
#   rows.jsonl   every benchmark row (JSON lines)
#
# CPU rehearsal of the same script (no GPU; ~2 minutes on 2 cores): every step with tiny shapes on
# CPU, Triton kernels in its interpreter (TRITON_INTERPRET=1), the rollout engine eagerly, no
# install (the pins and the wheel plan are checked, a dry run), into a temporary $OUT unless OUT is set:
#
#   bash benches/gpu/run.sh --rehearsal
#
# Options: --only STEP[,STEP] runs those steps alone; BUDGET_<STEP> (e.g. BUDGET_BENCH_LOSS=60)
# overrides a step's budget in seconds; PYTHON picks the interpreter (default: python3 on the device,
# .venv/bin/python in the rehearsal when it exists). Exit status 1 when any summary line is FAILED.
set -uo pipefail
cd "$(dirname "$0")/../.."

REHEARSAL=${REHEARSAL:-0}
ONLY=""
while (($#)); do
    case $1 in
    --rehearsal) REHEARSAL=1 ;;
    --only) ONLY=${2:?--only needs a comma-separated list of steps}; shift ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: bash benches/gpu/run.sh [--rehearsal] [--only STEP[,STEP]]" >&2; exit 2 ;;
    esac
    shift
done

if [[ $REHEARSAL == 1 ]]; then
    OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/aesr1-rehearsal.XXXXXX")}
    if [[ -z ${PYTHON:-} && -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; fi
    export TRITON_INTERPRET=1 AESR1_REHEARSAL=1
    # one thread per process: the rehearsal shares a small CPU machine
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
    #            install env pytest loss rollout scale
    BUDGETS=(60 40 120 150 120 240)
else
    if ! command -v nvidia-smi >/dev/null && [[ ${FORCE:-0} != 1 ]]; then
        # the device run installs wheels into this Python: never into a development venv by mistake
        echo "no nvidia-smi: the device run needs the GPU machine (FORCE=1 overrides); here use --rehearsal" >&2
        exit 2
    fi
    OUT=${OUT:-/tmp/aesr1-out}
    unset TRITON_INTERPRET # compiled kernels; interpreted ones on a GPU would be a fallback
    export AESR1_REHEARSAL=0
    # DeepSpeed's JIT op builds reject the image's TORCH_CUDA_ARCH_LIST=9.0a
    export TORCH_CUDA_ARCH_LIST=9.0
    BUDGETS=(45 15 100 90 130 150)
fi
PY=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/aesr1-work.XXXXXX") # scratch that must not land in $OUT
# the tree's Python sources (with the core from the carried wheel on the device; see wheels.py)
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONDONTWRITEBYTECODE=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 # no network: fail fast, never wait
export TRITON_CACHE_DIR="$WORK/triton" TORCHINDUCTOR_CACHE_DIR="$WORK/inductor"

SUMMARY=$OUT/summary.txt ROWS=$OUT/rows.jsonl STEPS_LOG=$OUT/steps.log
: >"$SUMMARY"
: >"$ROWS"
: >"$STEPS_LOG"
: >"$OUT/install.txt"
: >"$OUT/env.txt"
: >"$OUT/pytest.log"
mode=$([[ $REHEARSAL == 1 ]] && echo "CPU rehearsal" || echo "device run")
echo "[run.sh] $mode into $OUT ($(date '+%Y-%m-%d %H:%M:%S'), python: $PY)" | tee -a "$SUMMARY"

T0=$(date +%s)
PLANNED=0
want() { [[ -z $ONLY || ",$ONLY," == *",$1,"* ]]; }
budget() { # budget STEP DEFAULT: BUDGET_<STEP> overrides
    local var=BUDGET_${1//-/_}
    var=${var^^}
    echo "${!var:-$2}"
}
# step NAME BUDGET LOG COMMAND...: runs COMMAND under timeout; its limit is its budget plus what
# earlier steps left unused (the deadline of step k is T0 + the sum of the first k budgets)
step() {
    local name=$1 log=$3
    PLANNED=$((PLANNED + $2))
    shift 3
    local started
    started=$(date +%s)
    LIMIT=$((T0 + PLANNED - started))
    ((LIMIT < 1)) && LIMIT=1
    echo "[run.sh] $name: up to ${LIMIT}s" >&2
    printf '\n===== %s (limit %ss) %s\n$ %s\n' "$name" "$LIMIT" "$(date '+%H:%M:%S')" "$*" >>"$log"
    timeout -k 5 "$LIMIT" "$@" >>"$log" 2>&1
    RC=$?
    SECONDS_TAKEN=$(($(date +%s) - started))
}
summarise() { # summarise STEP [rowlog.py step options]
    "$PY" benches/gpu/rowlog.py step --rows "$ROWS" --step "$1" --rc "$RC" --seconds "$SECONDS_TAKEN" \
        --limit "$LIMIT" "${@:2}" 2>&1 | tee -a "$SUMMARY"
}

if want install; then
    if [[ $REHEARSAL == 1 ]]; then
        step install "$(budget install "${BUDGETS[0]}")" "$OUT/install.txt" "$PY" benches/gpu/wheels.py install --whl .whl --dry-run
        summarise install --note "dry run: pins and wheel plan checked, nothing installed"
    else
        step install "$(budget install "${BUDGETS[0]}")" "$OUT/install.txt" "$PY" benches/gpu/wheels.py install --whl .whl
        summarise install --note "see install.txt"
    fi
fi

if want env; then
    step env "$(budget env "${BUDGETS[1]}")" "$OUT/env.txt" "$PY" benches/gpu/env_report.py
    summarise env --note "$(grep -m1 -E 'NVIDIA|nvidia-smi: not found' "$OUT/env.txt" | cut -c1-120)"
fi

if want pytest-cuda; then
    # every test file with CUDA cases (torch.cuda skips, or the loss tests' device/backend grid)
    mapfile -t cuda_tests < <(grep -lE 'torch\.cuda\.is_available|DEVICE_BACKENDS' tests/test_*.py | grep -v test_gpu_script)
    pytest_args=(-q -rfEs -k cuda -p no:cacheprovider --durations=10)
    "$PY" -c "import pytest_timeout" 2>/dev/null && pytest_args+=(--timeout 120)
    if [[ $REHEARSAL != 1 ]] && "$PY" -c "import xdist" 2>/dev/null; then pytest_args+=(-n 4); fi
    echo "CUDA test files: ${cuda_tests[*]}" >>"$OUT/pytest.log"
    step pytest-cuda "$(budget pytest-cuda "${BUDGETS[2]}")" "$OUT/pytest.log" "$PY" -m pytest "${pytest_args[@]}" "${cuda_tests[@]}"
    summarise pytest-cuda --pytest-log "$OUT/pytest.log"
fi

if want bench-loss; then
    if [[ $REHEARSAL == 1 ]]; then
        # one timed call per row: the interpreter takes ~0.5 s a call; torch.compile's CPU build ~30 s
        loss_args=(--smoke --sweep --iters 1 --warmup 0 --skip "torch.compile")
    else
        loss_args=(--sweep)
    fi
    step bench-loss "$(budget bench-loss "${BUDGETS[3]}")" "$STEPS_LOG" "$PY" benches/bench_loss.py --rows "$ROWS" "${loss_args[@]}"
    summarise bench-loss --bench loss
fi

if want bench-rollout; then
    if [[ $REHEARSAL == 1 ]]; then
        rollout_args=(--smoke --greedy-check 8)
    else
        rollout_args=(--greedy-check 64)
    fi
    step bench-rollout "$(budget bench-rollout "${BUDGETS[4]}")" "$STEPS_LOG" "$PY" benches/bench_rollout.py --rows "$ROWS" \
        --methods engine,generate-dynamic,engine-eager,generate-static "${rollout_args[@]}"
    summarise bench-rollout --bench rollout
fi

if want bench-scale; then
    if [[ $REHEARSAL == 1 ]]; then
        scale_args=(--smoke --methods aesr1-rapo,trl-grpo-static,aesr1-sft)
    else
        scale_args=(--quick)
    fi
    step bench-scale "$(budget bench-scale "${BUDGETS[5]}")" "$STEPS_LOG" "$PY" benches/bench_scale.py --rows "$ROWS" \
        --no-progress --workdir "$WORK/scale" "${scale_args[@]}"
    summarise bench-scale --bench scale
fi

rm -rf "$WORK"
files=$(find "$OUT" -type f | wc -l)
total=$(($(date +%s) - T0))
if ((files > 8)); then
    echo "FAILED files in $OUT: $files (the device tool returns 8)" | tee -a "$SUMMARY"
fi
echo "[run.sh] done in ${total}s; $files files in $OUT" | tee -a "$SUMMARY"
echo
cat "$SUMMARY"
! grep -q '^FAILED' "$SUMMARY"
