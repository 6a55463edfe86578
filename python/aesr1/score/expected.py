"""The ``expected`` score: the exact expected answer under the model's probabilities of its digits.

A reasoning model answers ``<think>critique</think><answer>0.73</answer>``. Reading the sampled number
throws away what the model knows about its own uncertainty; here the critique is generated once
(greedily, by the caller) and the answer is then read as a distribution by teacher forcing.

The answer is a number on a scale [lo, hi] written with exactly ``decimals`` digits after the point,
so the valid answers are a finite set S of strings (``answer_strings``: for [0, 1] with 2 decimals the
101 strings ``"0.00"`` … ``"1.00"``; for [1, 5], 401 strings). After the answer prefix (the completion
up to and including ``<answer>``) the token sequences that spell a string of S form a tree: at a node
whose text so far is x, the allowed next tokens A(x) are the tokens t whose text keeps x + t a prefix
of some string of S; a string of S is a leaf (with at least one decimal no valid string is a prefix
of another, so where the number ends is never in doubt). With Qwen's tokenizer, which writes one
digit per token, the tree is leading digit, ".", tenths, hundredths; a BPE tokenizer with tokens
such as ``"0."`` or ``"73"`` spells one answer along several paths, and all of them are in the tree.
Then

    E = Σ_{s ∈ S} p(s) v(s),        std = sqrt(Σ_{s ∈ S} p(s) (v(s) − E)²),

    p(s) = Σ_{paths t_1 … t_n spelling s}  Π_k  p(t_k | prefix, t_<k) / Σ_{t' ∈ A(t_<k)} p(t' | …)

where v(s) is the number s denotes and p(t | …) the model's softmax probability of token t after the
prompt, the image, the answer prefix and the path so far.

The renormalisation over A conditions the model on writing a well-formed answer: the mass it puts on
anything else at that point (a space, a third decimal, ``</answer>``, prose) is dropped and the rest
rescaled, i.e. p(s) is the probability of s given that the model writes some valid answer — not the
probability that it writes exactly s, which would make E depend on how likely it is to break format.
The distribution therefore sums to 1 and the score is always on [lo, hi]. Tokens that could start a
valid string but can never complete one with this tokenizer are not in A (they have no leaf below
them, so they carry no answer).

Q-Align and DeQA-Score compute a soft score from the logits of five level words ("bad" … "excellent")
at a single position; here the answer is a number, so the expectation runs over its digits, one tree
level per token.

Computation: exact, with log-probabilities taken in float64 from the logits and accumulated in
float64. One teacher-forced forward pass per tree depth reads the next-token distribution of every
internal node of that depth at once: each row is the whole sequence prompt + image + answer prefix +
the node's tokens. All rows of a depth have the same length, so there is no padding; rows are split
into several passes only when a depth holds more than 65,536 tokens. The answer prefix is tokenized
from its text, as `aesr1.modeling.chat.build_inputs` tokenizes a completion. Each image's tree
is evaluated on its own (rows of one image only), so an image's result does not depend on which images
share the call or their order: on CPU in float32 the results agree to 1e-6 (in practice exactly).
"""

from __future__ import annotations

import inspect
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aesr1.prompts import SCORING_PROMPT

#: Most answer strings `answer_strings` builds; beyond that the scale or precision is a mistake.
MAX_ANSWERS = 1_000_000

#: Most tokens (rows × sequence length) in one forward pass; a depth with more is split into passes.
_ROW_TOKEN_BUDGET = 1 << 16

ANSWER_OPEN = "<answer>"
THINK_CLOSE = "</think>"


@dataclass
class ExpectedScore:
    """The expected answer of one image.

    Attributes:
        score: the expected value on the scale [lo, hi]; None when the completion has no answer prefix.
        std: the standard deviation of the answer distribution, on the same scale; None with score.
        distribution: answer string -> probability (sums to 1); empty when score is None.
        prefix: the completion text the digits were read after ("" when there is none).
        reason: why score is None; None otherwise.
    """

    score: float | None
    std: float | None
    distribution: dict[str, float] = field(default_factory=dict)
    prefix: str = ""
    reason: str | None = None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _grid_point(value: float, name: str, decimals: int) -> int:
    """`value` in units of 10^-decimals, which it must be a whole number of."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    units = float(value) * 10**decimals
    nearest = round(units)
    if abs(units - nearest) > 1e-6 * max(1.0, abs(units)):
        raise ValueError(
            f"{name}={value!r} is not a multiple of 10^-{decimals}: it has more than {decimals} decimals"
        )
    return int(nearest)


def _format_units(units: int, decimals: int) -> str:
    """The string of units × 10^-decimals with exactly `decimals` decimals (no "-0.00")."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), 10**decimals)
    return f"{sign}{whole}.{frac:0{decimals}d}" if decimals else f"{sign}{whole}"


def answer_strings(lo: float, hi: float, decimals: int) -> list[str]:
    """The valid answers on [lo, hi] with exactly `decimals` decimals, ascending: ``"0.00"`` …
    ``"1.00"`` for (0, 1, 2).

    Raises ValueError when lo >= hi, either end is not finite or has more than `decimals` decimals,
    `decimals` is not an integer in [0, 12], there would be more than `MAX_ANSWERS` answers, or one
    answer is a prefix of another (possible only with 0 decimals, e.g. "1" and "10": such answers
    cannot be told apart digit by digit).
    """
    if not _is_int(decimals) or not 0 <= decimals <= 12:
        raise ValueError(f"decimals must be an integer in [0, 12], got {decimals!r}")
    low, high = _grid_point(lo, "lo", decimals), _grid_point(hi, "hi", decimals)
    if not low < high:
        raise ValueError(f"the scale needs lo < hi, got lo={lo!r}, hi={hi!r}")
    if high - low + 1 > MAX_ANSWERS:
        raise ValueError(
            f"[{lo}, {hi}] with {decimals} decimals has {high - low + 1} answers, more than {MAX_ANSWERS}"
        )
    strings = [_format_units(units, decimals) for units in range(low, high + 1)]
    if decimals == 0:
        ordered = sorted(strings)
        for shorter, longer in zip(ordered, ordered[1:], strict=False):
            if longer.startswith(shorter):
                raise ValueError(
                    f"answer {shorter!r} is a prefix of {longer!r}: with 0 decimals the end of the "
                    "number is not determined by its digits; use at least 1 decimal"
                )
    return strings


def answer_prefix(completion: str) -> str | None:
    """The text the answer's digits follow: `completion` up to and including its first ``<answer>``;
    without one, up to and including its first ``</think>`` followed by ``<answer>``; otherwise None."""
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a string, got {type(completion).__name__}")
    position = completion.find(ANSWER_OPEN)
    if position >= 0:
        return completion[: position + len(ANSWER_OPEN)]
    position = completion.find(THINK_CLOSE)
    if position >= 0:
        return completion[: position + len(THINK_CLOSE)] + ANSWER_OPEN
    return None


# --- the tokens that can spell an answer --------------------------------------------------------

_token_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _answer_tokens(tokenizer, charset: frozenset[str]) -> list[tuple[int, str]]:
    """(id, text) of every token whose text is made only of `charset` characters.

    A token counts only when its stored form (`convert_ids_to_tokens`) and its decoded text
    (`decode([id])`) are the same string: for byte-level BPE the digits, "." and "-" are stored as
    themselves, while a SentencePiece "▁7" (which means " 7") or a byte-fallback "<0x37>" is not a
    bare digit inside a number and is left out, as are special tokens.
    """
    try:
        per_tokenizer = _token_cache.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced is simply not cached
        per_tokenizer = {}
    key = (len(tokenizer), charset)
    if key in per_tokenizer:
        return per_tokenizer[key]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = list(range(len(tokenizer)))
    stored = tokenizer.convert_ids_to_tokens(ids)
    found = []
    for token_id, raw in zip(ids, stored, strict=True):
        if token_id in special or not isinstance(raw, str) or not raw or not set(raw) <= charset:
            continue
        if tokenizer.decode([token_id]) == raw:
            found.append((token_id, raw))
    per_tokenizer[key] = found
    return found


@dataclass
class _Node:
    text: str
    path: tuple[int, ...]
    children: list[_Node] = field(default_factory=list)
    leaf: bool = False


def _build_tree(tokens: Sequence[tuple[int, str]], answers: Sequence[str], max_nodes: int) -> _Node:
    """The tree of token paths spelling an answer, dead branches (no answer below) removed.

    Raises ValueError when it would have more than `max_nodes` nodes (root included)."""
    valid = set(answers)
    # the characters that may follow each prefix, so a node only looks at tokens starting with one
    follows: dict[str, set[str]] = {}
    for answer in answers:
        for end in range(len(answer)):
            follows.setdefault(answer[:end], set()).add(answer[end])
    by_first: dict[str, list[tuple[int, str]]] = {}
    for token_id, text in tokens:
        by_first.setdefault(text[0], []).append((token_id, text))
    root = _Node("", ())
    count = 1
    frontier = [root]
    while frontier:
        grown = []
        for node in frontier:
            for char in sorted(follows.get(node.text, ())):
                for token_id, text in by_first.get(char, ()):
                    extended = node.text + text
                    if extended not in valid and extended not in follows:
                        continue
                    count += 1
                    if count > max_nodes:
                        raise ValueError(
                            f"the answer tree of this tokenizer has more than max_nodes={max_nodes} "
                            "nodes (many multi-character number tokens); raise max_nodes or narrow "
                            "the scale"
                        )
                    child = _Node(extended, (*node.path, token_id), leaf=extended in valid)
                    node.children.append(child)
                    if not child.leaf:
                        grown.append(child)
        frontier = grown
    if not _prune(root):
        raise ValueError("the tokenizer has no tokens that spell a valid answer")
    return root


def _prune(node: _Node) -> bool:
    """Drop children with no leaf below them; whether `node` keeps any answer."""
    if node.leaf:
        return True
    node.children = [child for child in node.children if _prune(child)]
    return bool(node.children)


# --- reading the tree with the model -------------------------------------------------------------


def _forward_names(model) -> set[str]:
    """The keyword arguments `model`'s forward names explicitly."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return set()
    return {name for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}


def _model_device(model):
    import itertools

    import torch

    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


class _ImageReader:
    """Next-token log-probabilities after prompt + image + answer prefix + a token path, for one image."""

    def __init__(self, model, processor, image, prompt: str, prefix: str):
        from aesr1.modeling.chat import prompt_text

        self.model = model
        self.device = _model_device(model)
        names = _forward_names(model)
        # logits at the last position only: the full (rows, length, vocab) tensor of a real model is
        # by far the largest thing a pass would allocate
        self.extra = {}
        if "logits_to_keep" in names:
            self.extra["logits_to_keep"] = 1
        if "use_cache" in names:
            self.extra["use_cache"] = False
        batch = processor(text=[prompt_text(processor, prompt)], images=[image], return_tensors="pt")
        self.prompt = dict(batch)
        prefix_ids = processor.tokenizer(prefix, add_special_tokens=False)["input_ids"]
        self.base_ids = self.prompt["input_ids"][0].tolist() + list(prefix_ids)

    def __call__(self, paths: Sequence[tuple[int, ...]]):
        """(len(paths), vocab) float64 log-softmax of the logits after each path (all one length)."""
        import torch

        rows = torch.tensor([self.base_ids + list(path) for path in paths], dtype=torch.long)
        count, length = rows.shape
        inputs: dict[str, Any] = {"input_ids": rows, "attention_mask": torch.ones_like(rows)}
        prompt = self.prompt
        if "mm_token_type_ids" in prompt:
            types = prompt["mm_token_type_ids"]
            tail = torch.zeros((1, length - types.shape[1]), dtype=types.dtype)
            inputs["mm_token_type_ids"] = torch.cat([types, tail], dim=1).repeat(count, 1)
        # one copy of the image per row: each row is a complete, independent request
        if "pixel_values" in prompt:
            inputs["pixel_values"] = prompt["pixel_values"].repeat(
                count, *[1] * (prompt["pixel_values"].dim() - 1)
            )
        if "image_grid_thw" in prompt:
            inputs["image_grid_thw"] = prompt["image_grid_thw"].repeat(count, 1)
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        with torch.no_grad():
            logits = self.model(**inputs, **self.extra).logits
        return torch.log_softmax(logits[:, -1, :].to(torch.float64), dim=-1).cpu()


def _read_tree(reader: _ImageReader, root: _Node) -> dict[str, float]:
    """p(s) for every answer s in the tree (see the module docstring), level by level."""
    import torch

    logp: dict[tuple[int, ...], float] = {root.path: 0.0}
    distribution: dict[str, float] = {}
    frontier = [root]
    while frontier:
        length = len(reader.base_ids) + len(frontier[0].path)
        per_pass = max(1, _ROW_TOKEN_BUDGET // length)
        grown = []
        for start in range(0, len(frontier), per_pass):
            nodes = frontier[start : start + per_pass]
            rows = reader([node.path for node in nodes])
            for node, row in zip(nodes, rows, strict=True):
                allowed = row[[child.path[-1] for child in node.children]]
                conditional = (allowed - torch.logsumexp(allowed, dim=0)).tolist()
                for child, value in zip(node.children, conditional, strict=True):
                    logp[child.path] = logp[node.path] + value
                    if child.leaf:
                        distribution[child.text] = distribution.get(child.text, 0.0) + math.exp(
                            logp[child.path]
                        )
                    else:
                        grown.append(child)
        frontier = grown
    return distribution


def expected_scores(
    model,
    processor,
    images: Sequence[Any],
    completions: Sequence[str],
    *,
    prompt: str = SCORING_PROMPT,
    lo: float = 0.0,
    hi: float = 1.0,
    decimals: int = 2,
    max_nodes: int = 4096,
) -> list[ExpectedScore]:
    """The expected answer of each image under the model's digit probabilities (module docstring).

    Args:
        model: a causal (vision-)language model; `model(**inputs).logits` is read under no_grad.
        processor: its processor (the tokenizer at `processor.tokenizer`).
        images: RGB PIL images (or paths), one per completion.
        completions: one (greedy) completion text per image; the digits are read after its
            `answer_prefix`.
        prompt: the user prompt, with an ``<image>`` placeholder.
        lo, hi, decimals: the answer scale and its written precision (`answer_strings`).
        max_nodes: most nodes of the token tree; ValueError beyond (before any forward pass).

    Returns one `ExpectedScore` per image, in order; score and std on [lo, hi]. Each image is read on
    its own, so its result does not depend on the other images of the call.
    """
    from aesr1.modeling.chat import load_images

    if len(images) != len(completions):
        raise ValueError(f"completions has {len(completions)} rows but images has {len(images)}")
    for index, completion in enumerate(completions):
        if not isinstance(completion, str):
            raise TypeError(f"completions[{index}] must be a string, got {type(completion).__name__}")
    if not _is_int(max_nodes) or max_nodes < 1:
        raise ValueError(f"max_nodes must be a positive integer, got {max_nodes!r}")
    answers = answer_strings(lo, hi, decimals)
    if not images:
        return []
    charset = frozenset("".join(answers))
    root = _build_tree(_answer_tokens(processor.tokenizer, charset), answers, max_nodes)
    values = {answer: float(answer) for answer in answers}
    opened = load_images(images)

    training = getattr(model, "training", False)
    if training:
        model.eval()  # dropout would make the probabilities random
    try:
        results = []
        for image, completion in zip(opened, completions, strict=True):
            prefix = answer_prefix(completion)
            if prefix is None:
                results.append(
                    ExpectedScore(
                        None, None, {}, "", "the completion has neither <answer> nor </think>, so there "
                        "is no point at which to read the answer's digits",
                    )
                )  # fmt: skip
                continue
            found = _read_tree(_ImageReader(model, processor, image, prompt, prefix), root)
            distribution = {answer: found[answer] for answer in answers if answer in found}
            mean = math.fsum(p * values[s] for s, p in distribution.items())
            variance = math.fsum(p * (values[s] - mean) ** 2 for s, p in distribution.items())
            results.append(ExpectedScore(mean, math.sqrt(max(variance, 0.0)), distribution, prefix, None))
    finally:
        if training:
            model.train()
    return results


__all__ = ["ExpectedScore", "answer_prefix", "answer_strings", "expected_scores"]
