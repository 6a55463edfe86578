"""Test-session isolation."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def fresh_accelerate_state():
    """Accelerate's state is a process-wide singleton: a trl trainer in one module leaves
    mixed_precision="bf16" behind (GRPOConfig's default), which would silently autocast the models of
    every later module's trainers. Each module starts from a clean state."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
