"""Policy, old-policy and reference log-probs of completions, with or without full logits.

Two ways to score `batch["completion_ids"]` (B, T):

- logits: the model's forward with `logits_to_keep = T + 1` gives (B, T, V) logits, then
  `aesr1.loss.rapo_loss` / `token_logprobs`;
- hidden (`fused_linear`): the decoder's last hidden states (B, T, H) and the lm_head weight go to
  `aesr1.loss.rapo_loss_from_hidden` (loss + gradients) or :func:`token_logprobs_from_hidden`
  (no-grad log-probs), which run the vocabulary GEMM a chunk of sequences at a time: no (B, T, V)
  tensor exists.

Under DeepSpeed ZeRO-3 the lm_head weight is partitioned and only gathered by the hooks around
lm_head's own forward, so the chunked GEMMs run *inside* a call of the lm_head module
(:func:`call_with_lm_head_weight`): its pre-forward hook gathers the full weight, the post-forward
hook releases it, and its backward hooks re-gather it while the weight gradient (computed in the
forward) is accumulated and reduce-scattered, exactly as for an ordinary `nn.Linear`. The whole
computation is also routed through the wrapper's `forward` (:func:`redirect_forward`, the forward
redirection of PyTorch Lightning's strategies and trl), so the DDP/DeepSpeed engine sees a forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from aesr1.modeling.chat import model_inputs

if TYPE_CHECKING:
    from aesr1.loss_config import RapoLossConfig


def completion_logits(model, batch: dict[str, Any]) -> torch.Tensor:
    """Logits (B, T, V) scoring `batch["completion_ids"]`; only the last T+1 positions go through lm_head."""
    width = batch["completion_ids"].shape[1]
    output = model(**model_inputs(batch), use_cache=False, logits_to_keep=width + 1)
    return output.logits[:, :-1]


def decoder_of(model):
    """The multimodal backbone (`Qwen2_5_VLModel`) that returns hidden states without lm_head (of
    the transformers model inside a `peft.PeftModel`, whose own `.model` is that whole model)."""
    from aesr1.modeling.lora import base_model

    inner = getattr(base_model(model), "model", None)
    if inner is None:
        raise TypeError(f"{type(model).__name__} has no `.model` backbone: fused_linear needs one")
    return inner


def completion_hidden(model, batch: dict[str, Any]) -> torch.Tensor:
    """Last hidden states (B, T, H) at the positions that score `batch["completion_ids"]` (position t
    scores token t: the hidden state one position earlier)."""
    width = batch["completion_ids"].shape[1]
    output = decoder_of(model)(**model_inputs(batch), use_cache=False)
    hidden = output[0]
    return hidden[:, -(width + 1) : -1]


def call_with_lm_head_weight(model, fn: Callable[..., Any], hidden: torch.Tensor, *args: Any, **kwargs: Any):
    """`fn(hidden, lm_head.weight, *args, **kwargs)` run as lm_head's forward (see the module docstring)."""
    from aesr1.modeling.lora import base_model

    head = base_model(model).get_output_embeddings()
    if hasattr(head, "modules_to_save"):  # peft's wrapper of a module trained in full
        raise TypeError(
            "fused_linear reads lm_head's weight, and lm_head is in model.lora.modules_to_save: "
            "set rapo.fused_linear=false"
        )
    if head is None or getattr(head, "bias", None) is not None:
        raise TypeError("fused_linear needs a bias-free lm_head (`get_output_embeddings()`)")
    original = head.forward

    def forward(h, *a, **k):
        head.forward = original  # fn may call lm_head itself
        return fn(h, head.weight, *a, **k)

    head.forward = forward
    try:
        return head(hidden, *args, **kwargs)
    finally:
        head.forward = original


def redirect_forward(wrapper, unwrapped, method: Callable[..., Any], *args: Any, **kwargs: Any):
    """`method(*args, **kwargs)` executed as `wrapper`'s forward (DDP / DeepSpeed engine hooks run).

    `unwrapped.forward` is swapped for a function that restores it and calls `method`, then the
    wrapper is called: whatever it does around its module's forward (DDP's gradient-sync
    preparation, ZeRO-3's parameter hooks) happens around `method`. Own code rather than trl's
    private `_ForwardRedirection`, whose location and name are not part of trl's API.
    """
    if wrapper is unwrapped:
        return method(*args, **kwargs)
    original = unwrapped.forward

    def forward(*inner_args: Any, **inner_kwargs: Any) -> Any:
        unwrapped.forward = original  # `method` may call the real forward itself
        return method(*inner_args, **inner_kwargs)

    unwrapped.forward = forward
    try:
        return wrapper(*args, **kwargs)
    finally:
        unwrapped.forward = original


@torch.no_grad()
def token_logprobs_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    completion_ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    backend: str = "auto",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """log_softmax(hidden @ weight^T / temperature)[completion_ids] in fp32, (B, T), one chunk of
    sequences at a time (`chunk_size` sequences; default: the fused loss's chunk). Padding gives 0."""
    from aesr1.loss import token_logprobs
    from aesr1.triton_kernels.fused_linear_rapo import compute_dtype, default_chunk_sequences

    batch, seq_len, width = hidden.shape
    vocab = weight.shape[0]
    # the loss's chunking and GEMM dtype, so that on-policy log-probs match the loss's bit for bit
    element_size = torch.empty((), dtype=compute_dtype(hidden.device, hidden.dtype)).element_size()
    chunk = chunk_size or default_chunk_sequences(seq_len, vocab, element_size)
    out = torch.zeros(batch, seq_len, dtype=torch.float32, device=hidden.device)
    for b0 in range(0, batch, chunk):
        b1 = min(batch, b0 + chunk)
        logits = torch.mm(hidden[b0:b1].reshape(-1, width), weight.t()).view(b1 - b0, seq_len, vocab)
        out[b0:b1] = token_logprobs(
            logits, completion_ids[b0:b1], temperature=temperature, mask=mask[b0:b1], backend=backend
        )
        del logits
    return out


def _hidden_logprobs(unwrapped, batch: dict[str, Any], temperature: float, backend: str) -> torch.Tensor:
    hidden = completion_hidden(unwrapped, batch)
    return call_with_lm_head_weight(
        unwrapped, token_logprobs_from_hidden, hidden, batch["completion_ids"], batch["completion_mask"],
        temperature=temperature, backend=backend,
    )  # fmt: skip


@torch.no_grad()
def sequence_logprobs(
    model,
    unwrapped,
    batch: dict[str, Any],
    *,
    temperature: float,
    backend: str,
    fused_linear: bool,
) -> torch.Tensor:
    """(B, T) fp32 log-probs of the completion tokens under `model` (no gradient); 0 on padding."""
    from aesr1.loss import token_logprobs

    if fused_linear:
        return redirect_forward(model, unwrapped, _hidden_logprobs, unwrapped, batch, temperature, backend)
    logits = completion_logits(model, batch)
    return token_logprobs(
        logits,
        batch["completion_ids"],
        temperature=temperature,
        mask=batch["completion_mask"],
        backend=backend,
    )


def _hidden_loss(unwrapped, batch: dict[str, Any], loss_args: tuple, loss_kwargs: dict[str, Any]):
    from aesr1.loss import rapo_loss_from_hidden

    hidden = completion_hidden(unwrapped, batch)
    return call_with_lm_head_weight(unwrapped, rapo_loss_from_hidden, hidden, *loss_args, **loss_kwargs)


def policy_loss(
    model,
    unwrapped,
    batch: dict[str, Any],
    *,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    loss_config: RapoLossConfig,
    fused_linear: bool,
    num_sequences: float | torch.Tensor | None = None,
    num_tokens: float | torch.Tensor | None = None,
    deferred_checks: list | None = None,
):
    """(loss, metrics) of RAPO (Eq. 10-12) for the completions of `batch` (`completion_ids`,
    `completion_mask`) with the settings of `loss_config`; the other arguments as in
    `aesr1.loss.rapo_loss`."""
    from aesr1.loss import rapo_loss

    loss_args = (batch["completion_ids"], old_logp, ref_logp, advantages, batch["completion_mask"])
    loss_kwargs = dict(
        loss_config.as_kwargs(),
        num_sequences=num_sequences,
        num_tokens=num_tokens,
        deferred_checks=deferred_checks,
    )
    if fused_linear:
        return redirect_forward(model, unwrapped, _hidden_loss, unwrapped, batch, loss_args, loss_kwargs)
    logits = completion_logits(model, batch)
    return rapo_loss(logits, *loss_args, **loss_kwargs)
