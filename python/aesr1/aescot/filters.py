"""Per-item filter verdicts: cleaning and format checks of the expert's text, and the leakage filter.

Every verdict is recorded in the output (`filters` field) or in the rejects file with its reason.
Drop reasons, in the order they are checked (the first failing one names the drop):
``missing_image``, ``format``, ``leakage``, ``inconsistent``, ``factual_error``, ``judge_unparseable``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from aesr1.aescot.leakage import find_leaks, leak_reason

DROP_REASONS = ("missing_image", "format", "leakage", "inconsistent", "factual_error", "judge_unparseable")
#: Reasons an item is retried on the next run instead of counted as dropped.
ERROR_REASONS = ("expert_error", "judge_error")

_LEADING_THINK = re.compile(r"^\s*<think>.*?</think>\s*", re.DOTALL)
_FORMAT_TAGS = re.compile(r"</?\s*(?:think|answer)\s*>", re.IGNORECASE)


@dataclass
class FilterVerdict:
    passed: bool
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, **({"reason": self.reason} if self.reason else {})}


def clean_critique(text: str, *, strip_think: bool = True) -> str:
    """The critique text to keep: a reasoning model's leading `<think>...</think>` removed, whitespace
    trimmed. The expert's own chain of thought may discuss the hidden score, so it never enters the data."""
    if strip_think:
        text = _LEADING_THINK.sub("", text, count=1)
    return text.strip()


def check_format(
    critique: str,
    finish_reason: str | None,
    *,
    min_chars: int = 80,
    max_chars: int | None = None,
    english_only: bool = True,
) -> FilterVerdict:
    """Is `critique` usable as the `<think>` part of an SFT target?

    Fails for a refusal or an empty answer, a truncated one (finish reason "length"), one shorter than
    `min_chars` or longer than `max_chars`, one containing `<think>`/`<answer>` tags (they would break
    the target format), and with `english_only`, one whose letters are mostly non-ASCII (Appendix B
    asks for English).
    """
    if finish_reason in ("refusal", "content_filter"):
        return FilterVerdict(False, f"no critique (finish reason {finish_reason!r})")
    if not critique:
        return FilterVerdict(False, "empty critique")
    if finish_reason == "length":
        return FilterVerdict(False, "truncated at the token limit")
    if len(critique) < min_chars:
        return FilterVerdict(False, f"too short ({len(critique)} < {min_chars} characters)")
    if max_chars is not None and len(critique) > max_chars:
        return FilterVerdict(False, f"too long ({len(critique)} > {max_chars} characters)")
    if _FORMAT_TAGS.search(critique):
        return FilterVerdict(False, "contains <think>/<answer> tags")
    if english_only:
        letters = [c for c in critique if c.isalpha()]
        ascii_share = sum(c.isascii() for c in letters) / max(1, len(letters))
        if ascii_share < 0.9:
            return FilterVerdict(False, f"not English ({ascii_share:.0%} ASCII letters)")
    return FilterVerdict(True)


def check_leakage(critique: str) -> FilterVerdict:
    """The programmatic score-leakage filter (`aesr1.aescot.leakage`) as a verdict."""
    hits = find_leaks(critique)
    return FilterVerdict(False, leak_reason(hits)) if hits else FilterVerdict(True)
