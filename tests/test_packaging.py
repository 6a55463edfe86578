"""The Triton kernels ship inside the package as `aesr1.triton_kernels`, in editable installs, wheels
and sdists alike. A top-level `triton_kernels` would shadow (or be shadowed by) the PyPI package that
owns that name. Needs only numpy: .ci/package-check also runs this against the installed wheel."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import aesr1

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(aesr1.__file__).resolve().parent
KERNEL_MODULES = ("_launch", "fused_linear_rapo", "rapo_loss", "token_logprobs")


def test_kernels_are_a_subpackage_of_the_imported_aesr1():
    for name in KERNEL_MODULES:
        # find_spec imports the parent package only: no torch or triton needed.
        spec = importlib.util.find_spec(f"aesr1.triton_kernels.{name}")
        assert spec is not None and spec.origin is not None, name
        assert Path(spec.origin).resolve() == PACKAGE_DIR / "triton_kernels" / f"{name}.py"


def test_checkout_has_no_top_level_triton_kernels():
    spec = importlib.util.find_spec("triton_kernels")
    if spec is None:
        return
    locations = list(spec.submodule_search_locations or []) or [spec.origin]
    for location in locations:
        path = Path(location).resolve()
        assert not path.is_relative_to(REPO), f"top-level triton_kernels found in this checkout: {path}"


def test_distribution_installs_only_the_aesr1_package():
    files = importlib.metadata.files("aesr1") or []
    # The `aesr1` console script is recorded outside site-packages (../../../bin/aesr1).
    top_level = {str(f).split("/")[0] for f in files if not str(f).startswith("../")}
    # aesr1.pth: the editable install's path entry for python/
    allowed = {"aesr1", "aesr1.pth"}
    unexpected = {name for name in top_level if name not in allowed and not name.endswith(".dist-info")}
    assert not unexpected, f"the aesr1 distribution installs more than the aesr1 package: {unexpected}"
