"""Triton kernels of the RAPO loss. Shipped inside the wheel as `aesr1.triton_kernels`
(never as a top-level `triton_kernels`, a name owned by another PyPI package)."""
