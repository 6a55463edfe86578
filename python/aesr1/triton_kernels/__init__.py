"""Triton kernels of the RAPO loss. Shipped inside the wheel as `aesr1.triton_kernels`
(never as a top-level `triton_kernels`, a name owned by another PyPI package).

Each kernel sits beside the fp32 PyTorch reference of the same function (the CPU backend):

- `rapo_loss`: the token kernel (log-prob, entropy and d loss/d logits of paper Eq. 10-12 in one
  forward), `RapoLossFunction`, and the eager autograd formulation `rapo_loss_reference`;
- `token_logprobs`: the same kernel without its gradient pass, for old/reference log-probs;
- `fused_linear_rapo`: the chunked lm_head GEMM + token kernel + dX/dW GEMMs.

The public, validated API is `aesr1.loss`. Modules import Triton lazily enough that the PyTorch
path works where Triton is not installed.
"""
