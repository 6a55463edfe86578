"""On-device logits processing, token choice and sampling log-probs of the decode engine.

The processing mirrors what `transformers` `generate` applies for the settings the engine supports,
in the same order, so that the engine samples from the same distribution:

1. repetition penalty (`generation_config.repetition_penalty`; prompt padding ignored, as in 5.x),
2. suppressed tokens (`generation_config.suppress_tokens`) set to -inf,
3. when sampling: temperature, then top-k (ties with the k-th value kept), then top-p (nucleus; the
   most likely token always kept).

Which distribution the sampling log-prob refers to: `log_softmax` of the fp32 logits after all the
steps above, i.e. the distribution the token was actually drawn from (temperature-scaled and
top-k/top-p filtered). With greedy decoding (no temperature, no filters) it is the temperature-1
distribution after steps 1-2. It equals the trainer's recomputed `log_softmax(logits / T)` up to
numerics only when top_k = 0, top_p = 1, no penalty and the suppressed tokens carry no mass.

Tokens are drawn with the exponential race `argmax(p / E)`, E ~ Exp(1) i.i.d. (the Gumbel-max trick
in another form): the same distribution as `torch.multinomial(p, 1)`, but one elementwise kernel and
an argmax, with no host synchronisation and no device-side assert on bad probabilities, so it can be
captured in a CUDA graph. Everything here is shape-static and allocation-only (no `.item()`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

#: Smallest exponential draw used: keeps p / E finite if the generator ever returns exactly 0.
_MIN_EXPONENTIAL = 1e-30


@dataclass(frozen=True)
class SamplingParams:
    """What the engine does with the logits of one step (hashable: it keys captured CUDA graphs).

    Attributes:
        do_sample: draw from the processed distribution (True) or take its argmax (False).
        temperature: divides the logits when sampling (> 0).
        top_k: keep the k most likely tokens when sampling (0 = off).
        top_p: keep the smallest set of most likely tokens with mass >= top_p when sampling (1 = off).
        repetition_penalty: transformers' CTRL-style penalty on tokens already in the sequence (1 = off).
        suppress_tokens: token ids that are never chosen.
    """

    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    suppress_tokens: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if any(not isinstance(t, int) or t < 0 for t in self.suppress_tokens):
            raise ValueError(f"suppress_tokens must be non-negative ints, got {self.suppress_tokens}")

    @property
    def uses_penalty(self) -> bool:
        return self.repetition_penalty != 1.0


def suppress_mask(params: SamplingParams, vocab_size: int, device) -> torch.Tensor | None:
    """Boolean [vocab_size] mask of the suppressed tokens (ids past the vocabulary are ignored, as in
    transformers), or None when nothing is suppressed. Built once, outside any captured region."""
    ids = [t for t in params.suppress_tokens if t < vocab_size]
    if not ids:
        return None
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    mask[torch.tensor(ids, device=device)] = True
    return mask


def process_logits(
    logits: torch.Tensor,
    params: SamplingParams,
    *,
    seen: torch.Tensor | None = None,
    suppressed: torch.Tensor | None = None,
) -> torch.Tensor:
    """The processed fp32 logits [b, V] (see the module docstring for the steps and their order).

    `seen` is a [b, V] boolean mask of the tokens already in each sequence (needed when the
    repetition penalty is on); `suppressed` the mask of `suppress_mask`.
    """
    scores = logits.float()
    if params.uses_penalty:
        if seen is None:
            raise ValueError("seen must be given when repetition_penalty != 1")
        penalised = torch.where(
            scores < 0, scores * params.repetition_penalty, scores / params.repetition_penalty
        )
        scores = torch.where(seen, penalised, scores)
    if suppressed is not None:
        scores = scores.masked_fill(suppressed, float("-inf"))
    if not params.do_sample:
        return scores
    if params.temperature != 1.0:
        scores = scores / params.temperature
    if params.top_k > 0:
        k = min(params.top_k, scores.shape[-1])
        kth = torch.topk(scores, k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= (1 - params.top_p)
        drop_sorted[..., -1:] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


def choose_tokens(
    scores: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen token [b] (long) and its log-prob [b] (fp32) under `log_softmax(scores)`."""
    logprobs = torch.log_softmax(scores, dim=-1)
    if params.do_sample:
        noise = torch.empty_like(scores).exponential_(generator=generator).clamp_min_(_MIN_EXPONENTIAL)
        tokens = (logprobs.exp() / noise).argmax(dim=-1)
    else:
        tokens = scores.argmax(dim=-1)
    chosen = logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return tokens, chosen
