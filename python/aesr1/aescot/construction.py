"""Prompts of the AesCoT pipeline: the expert's construction prompt and the judge's audit prompt.

The construction prompt is Appendix B's "Prompt Used for AesCoT Construction" (with the score to two
decimals) followed by the five aesthetic dimensions of Table 5, which §E.1 says guide the expert's
analysis. The judge prompt asks for the two model-checked error types of §3.2 / Appendix E.2
(e_align: reasoning-score inconsistency, e_fact: factual errors) as one JSON object.
"""

from __future__ import annotations

from typing import Any

from aesr1.prompts import AESCOT_PROMPT, BINS, DIMENSIONS, IMAGE_PLACEHOLDER, score_bin


def dimensions_guidance(dimensions: dict[str, str] | None = None) -> str:
    """The Table 5 dimensions as an instruction block appended to the Appendix B prompt."""
    dimensions = DIMENSIONS if dimensions is None else dimensions
    lines = [
        "Organise the critique along these five aesthetic dimensions, in this order, before the final "
        "judgment:"
    ]
    lines += [f"- {name}: {explanation}" for name, explanation in dimensions.items()]
    return "\n".join(lines)


def construction_prompt(score: float, *, with_dimensions: bool = True) -> str:
    """Appendix B's AesCoT construction prompt for `score` (+ Table 5 guidance); keeps `<image>`."""
    score_bin(score)  # validates the range
    prompt = AESCOT_PROMPT.format(score=f"{score:.2f}")
    if with_dimensions:
        prompt = f"{prompt}\n\n{dimensions_guidance()}"
    return prompt


def _band_description() -> str:
    return ", ".join(f"{name} ({lo:.1f}-{hi:.1f})" for name, (lo, hi) in BINS.items())


JUDGE_PROMPT = (
    "You audit training data for an image aesthetics model. Below is a critique of this picture "
    "<image> written by an expert who knew its aesthetic rating. The rating is {score} on a 0-1 scale "
    '(0 very poor, 1 excellent), which falls in the "{band}" band; the bands are {bands}.\n\n'
    'Critique:\n"""\n{critique}\n"""\n\n'
    "Check two things.\n"
    "1. consistent: do the critique's reasoning and its final judgment agree with the rating band? "
    "A critique that praises a poor picture, condemns an excellent one, or ends with a judgment that "
    "contradicts the strengths and weaknesses it lists is inconsistent.\n"
    "2. factually_accurate: does the critique describe only what is in the picture? Describing "
    "elements that do not exist or misreading visible features (colours, light, subjects, layout) are "
    "factual errors.\n"
    "Answer with one JSON object and nothing else, in this form:\n"
    '{{"consistent": true, "consistency_reason": "...", "factually_accurate": true, '
    '"factual_errors": []}}'
)


def judge_prompt(score: float, critique: str) -> str:
    """The judge's audit prompt for one critique (keeps `<image>`)."""
    return JUDGE_PROMPT.format(
        score=f"{score:.2f}", band=score_bin(score), bands=_band_description(), critique=critique.strip()
    )


def chat_content(prompt: str, image_url: str) -> list[dict[str, Any]]:
    """OpenAI chat-completions content parts: the prompt's text with the image where `<image>` stands.

    A prompt without the placeholder gets the image first, the usual layout of vision chat models.
    """
    if prompt.count(IMAGE_PLACEHOLDER) > 1:
        raise ValueError(f"prompt may contain at most one {IMAGE_PLACEHOLDER!r} placeholder")
    before, found, after = prompt.partition(IMAGE_PLACEHOLDER)
    if not found:
        before, after = "", prompt
    image_part = {"type": "image_url", "image_url": {"url": image_url}}
    parts: list[dict[str, Any]] = []
    if before.strip():
        parts.append({"type": "text", "text": before.rstrip()})
    parts.append(image_part)
    if after.strip():
        parts.append({"type": "text", "text": after.lstrip()})
    return parts
