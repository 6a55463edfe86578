"""Optional Triton import shared by the kernel modules.

Triton decides once, when a kernel is decorated, between compiling it for the GPU and running it in
its CPU interpreter (`TRITON_INTERPRET=1`). The interpreter needs the whole of `triton.language` in
the same mode, so the choice cannot be made per launch: CPU tensors can use the Triton kernels only
in a process started with `TRITON_INTERPRET=1`, and in such a process CUDA tensors are interpreted too.
"""

from __future__ import annotations

try:  # Triton is optional: the PyTorch reference path serves CPUs and platforms without it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where Triton is absent
    triton = None
    tl = None

__all__ = ["kernels_interpreted", "tl", "triton", "triton_available"]


def triton_available() -> bool:
    return triton is not None


def kernels_interpreted(kernel) -> bool:
    """Whether `kernel` runs in Triton's CPU interpreter (it was decorated under TRITON_INTERPRET=1)."""
    if triton is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)
