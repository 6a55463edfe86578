#!/usr/bin/env bash
# Run HERE (network to PyPI, no GPU needed) before benches/gpu/run.sh goes to the device: fills
# .whl/ (git-ignored; the device tool carries it with carry [".whl"]) with
#   - the abi3 aesr1 wheel (maturin, release): run.sh takes its compiled core from it, and the
#     stamp .whl/aesr1-core.sha256 of the Rust sources it was built from;
#   - the wheels of benches/gpu/pins.txt (the one place for their versions): what the device image
#     lacks, for CPython 3.12 on x86-64; DeepSpeed (sdist only) is built into a pure wheel here.
# Then checks the pins against the wheels' metadata (benches/gpu/wheels.py check --strict) and the
# size: the working tree plus .whl must stay under the device tool's 64 MiB.
#   bash benches/gpu/prepare.sh
# Rebuild after any change under rust/ (run.sh refuses a core built from other Rust sources);
# Python-only changes need no rebuild (the tree's python/ runs on the device).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -m maturin --version >/dev/null 2>&1 || "$PY" -m pip install -q "maturin>=1.8,<2"
mkdir -p .whl
rm -f .whl/aesr1-*.whl
"$PY" -m maturin build --release --out .whl          # abi3: one wheel for any CPython >= 3.10
"$PY" benches/gpu/wheels.py download --whl .whl
"$PY" benches/gpu/wheels.py stamp --whl .whl
"$PY" benches/gpu/wheels.py check --whl .whl --strict
ls -la .whl
whl_kib=$(du -sk .whl | cut -f1)
tree_kib=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | du -ck --files0-from=- 2>/dev/null | tail -1 | cut -f1)
echo "carried: .whl ${whl_kib} KiB + working tree ${tree_kib} KiB (limit 65536 KiB)"
if (( whl_kib + tree_kib > 65536 )); then echo "too large for the device tool" >&2; exit 1; fi
