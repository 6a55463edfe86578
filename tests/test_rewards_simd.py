"""The native module's SIMD kernels are compiled as SIMD: no x86 lane intrinsic (`_mm256_*`,
`_mm512_*`) stands in the binary as a function of its own. One that does was compiled outside its
caller's target features (e.g. inside a generic helper that was not inlined), and every lane
operation through it is a call: the rank reward ran ~100x slower on AVX2 that way, with results
unchanged, so only the symbols show it. Needs only numpy: .ci/package-check also runs this against
the installed wheel."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from aesr1 import _core

#: CPU-feature detection reads these once per process: out of line by design.
DETECTION = ("xgetbv", "cpuid")


def intrinsic_functions(symbols: list[str]) -> list[str]:
    """The demangled symbols that are x86 lane intrinsics compiled as functions of their own."""
    found = []
    for name in symbols:
        if not re.search(r"core_arch::x86(_64)?::", name):
            continue
        if any(f"::{d}" in name or name.endswith(d) for d in DETECTION):
            continue
        found.append(name)
    return found


def test_the_filter_flags_lane_intrinsics_and_keeps_detection():
    symbols = [
        "core::core_arch::x86::avx::_mm256_set1_pd",
        "core::core_arch::x86::avx512f::_mm512_permutexvar_pd",
        "core::core_arch::x86_64::fma::_mm256_fmadd_pd",
        "core::core_arch::x86::xsave::_xgetbv",
        "core::core_arch::x86::cpuid::__cpuid_count",
        "aesr1_core::rank::Row::partner_sums_avx2",
    ]
    assert intrinsic_functions(symbols) == symbols[:3]


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm (binutils) to read the symbol table")
def test_no_lane_intrinsic_is_compiled_as_a_function_of_its_own():
    library = Path(_core.__file__)
    done = subprocess.run(
        ["nm", "--demangle", "--defined-only", str(library)], capture_output=True, text=True
    )
    symbols = [line.split(maxsplit=2)[-1] for line in done.stdout.splitlines() if line.strip()]
    if not any("aesr1_core" in s for s in symbols):
        # release wheels are stripped; the development build of the same code is checked
        pytest.skip(f"{library.name} is stripped: no symbol table to inspect")
    assert intrinsic_functions(symbols) == [], (
        "lane intrinsics compiled out of line (a generic helper not inlined into its "
        "#[target_feature] caller: use loops instead of std::array::from_fn and closures there)"
    )
