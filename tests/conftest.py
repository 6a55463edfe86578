"""Test-session isolation."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True, scope="module")
def fresh_accelerate_state():
    """Accelerate's state is a process-wide singleton: a trl trainer in one module leaves
    mixed_precision="bf16" behind (GRPOConfig's default), which would silently autocast the models of
    every later module's trainers. Each module starts from a clean state.

    A process that never imported accelerate has no state to reset, and the numpy-only install
    (rewards, metrics) runs its tests without accelerate or torch."""
    state = sys.modules.get("accelerate.state")
    if state is not None:
        state.AcceleratorState._reset_state(reset_partial_state=True)
        state.GradientState._reset_state()
    yield
