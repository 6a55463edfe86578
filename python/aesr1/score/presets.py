"""Scoring presets: what a released checkpoint expects to be asked, and how its answer is read.

A model trained with reinforcement learning on one prompt and one answer format scores best (and is
only comparable with its authors' published figures) when it is asked exactly that prompt, sampled
with the settings its authors used, and its answer is read by the same rules. A `Preset` bundles
those: the user prompt (with one ``<image>`` placeholder where the image goes), an optional system
prompt, the answer's scale and number of decimals, the answer parser and the generation settings.

Presets of other projects reproduce their released inference code string for string; `source`
names the file and commit the strings were copied from. One departure is deliberate: where the
released code substitutes a random score for an answer it cannot read, the preset's parser returns
None, so unreadable answers are counted rather than hidden among real scores.

Prompts go through `aesr1.modeling.chat.user_message`, which splits the prompt at ``<image>`` into
text, image, text parts; a prompt that starts with ``<image>`` puts the image before the text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aesr1.prompts import IMAGE_PLACEHOLDER, SCORING_PROMPT
from aesr1.score.scales import UNIT, Scale

Parser = Callable[[str], "float | None"]


def parse_aesr1(completion: str) -> float | None:
    """This project's rule (`aesr1.rewards.parse_scores`): the last complete ``<answer>…</answer>``
    block whose content is one decimal number in [0, 1]; None when there is none."""
    from aesr1.rewards import parse_scores

    value = float(parse_scores([completion])[0])
    return None if math.isnan(value) else value


_OPEN, _CLOSE = "<answer>", "</answer>"
# The released number patterns, verbatim. Each can only fail within one character of where it
# starts and succeeds at the first digit, so a search is linear in the text.
_UNSIGNED_NUMBER = re.compile(r"\d+(\.\d+)?")
_SIGNED_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def _last_answer(text: str) -> str | None:
    """``re.findall(r'<answer>(.*?)</answer>', text, re.DOTALL)[-1]`` (None when it finds nothing),
    found with str.find. The lazy regex rescans the rest of the text from every ``<answer>`` that
    has no closing tag, quadratic on untrusted model output; this walks it once.

    Same matches: findall's next match starts at the first ``<answer>`` at or after the end of the
    previous one and ends at the first ``</answer>`` after that tag; when that ``<answer>`` has no
    closing tag after it, no later one has either, so the scan stops."""
    last = None
    position = 0
    while True:
        start = text.find(_OPEN, position)
        if start < 0:
            return last
        end = text.find(_CLOSE, start + len(_OPEN))
        if end < 0:
            return last
        last = text[start + len(_OPEN) : end]
        position = end + len(_CLOSE)


def _released_r1_parser(number: re.Pattern[str]) -> Parser:
    """The answer reading shared by the VLM-R1-derived scoring code of VisualQuality-R1 and
    Aes-R1: the content of the last ``<answer>…</answer>`` block (the whole completion when there
    is none), stripped, then the first number in it. No range check: an out-of-range number is
    returned as it is, as the released code does."""

    def parse(completion: str) -> float | None:
        answer = _last_answer(completion)
        answer = answer.strip() if answer is not None else completion.strip()
        match = number.search(answer)
        # The released code raises here and substitutes random.randint(1, 5); an unreadable answer
        # is reported as None instead. float() cannot fail on the match: `\d` is Unicode category
        # Nd, which float() also accepts.
        return None if match is None else float(match.group())

    return parse


#: VisualQuality-R1's reading: `re.search(r'\d+(\.\d+)?', answer)`, so a sign is dropped
#: ("-2" reads 2.0) and ".5" reads 5.0.
parse_visualquality_r1 = _released_r1_parser(_UNSIGNED_NUMBER)
#: Aes-R1's `extract_first_number`: `re.search(r'-?\d+(\.\d+)?', answer)`, a leading minus kept.
parse_aesr1_release = _released_r1_parser(_SIGNED_NUMBER)


@dataclass(frozen=True)
class Preset:
    """How to score images for one released checkpoint.

    Attributes:
        name: key in `PRESETS`.
        prompt: the user turn, with exactly one ``<image>`` where the image goes.
        system_prompt: a system turn; None sends none, leaving the chat template's default (Qwen2-VL
            templates then insert "You are a helpful assistant.", as every released script here
            relies on).
        scale: the scale the model answers on (a ``"lo-hi"`` string is accepted).
        decimals: digits after the point the prompt asks for.
        source: ``"owner/repo path@commit"`` the strings were copied from, or ``"aesr1"``.
        temperature / top_p / max_new_tokens: the released code's generation settings.
        top_k: the released top-k cut (0 = off).
        do_sample: whether the released code samples (all presets here do).
        parser: reads one completion; the default is this project's rule, which only reads answers
            on [0, 1], so a preset on another scale must pass its own.
    """

    name: str
    prompt: str
    system_prompt: str | None
    scale: Scale
    decimals: int
    source: str
    temperature: float
    top_p: float
    max_new_tokens: int
    top_k: int = field(default=0, kw_only=True)
    do_sample: bool = field(default=True, kw_only=True)
    parser: Parser = field(default=parse_aesr1, kw_only=True, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"preset name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.prompt, str) or self.prompt.count(IMAGE_PLACEHOLDER) != 1:
            raise ValueError(
                f"preset {self.name!r}: prompt must contain exactly one {IMAGE_PLACEHOLDER!r} placeholder"
            )
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise ValueError(f"preset {self.name!r}: system_prompt must be a string or None")
        object.__setattr__(self, "scale", Scale.parse(self.scale))
        if not _is_int(self.decimals) or self.decimals < 0:
            raise ValueError(f"preset {self.name!r}: decimals must be an integer >= 0, got {self.decimals!r}")
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(
                f"preset {self.name!r}: max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}"
            )
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"preset {self.name!r}: top_k must be an integer >= 0, got {self.top_k!r}")
        if (
            not _is_real(self.temperature)
            or self.temperature < 0
            or (self.do_sample and self.temperature == 0)
        ):
            raise ValueError(
                f"preset {self.name!r}: temperature must be finite and > 0 when sampling, got {self.temperature!r}"
            )
        if not _is_real(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"preset {self.name!r}: top_p must lie in (0, 1], got {self.top_p!r}")
        if not callable(self.parser):
            raise ValueError(f"preset {self.name!r}: parser must be callable")
        if self.parser is parse_aesr1 and self.scale != UNIT:
            raise ValueError(
                f"preset {self.name!r}: the default parser reads answers on 0-1 only, but the scale is "
                f"{self.scale.name}; pass parser="
            )

    def parse(self, completion: str) -> float | None:
        """The completion's score on `self.scale`, None when it has no readable answer."""
        if not isinstance(completion, str):
            raise TypeError(f"completion must be a string, got {type(completion).__name__}")
        return self.parser(completion)

    def parse_many(self, completions: Iterable[str]) -> list[float | None]:
        """`parse` of each completion, in order."""
        if isinstance(completions, str):
            raise TypeError("completions must be an iterable of strings, not one string")
        return [self.parse(completion) for completion in completions]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- VisualQuality-R1 (Wu et al., NeurIPS 2025) -----------------------------------------------------
# The released inference code is the README's scripts ("Quick Start" and the vLLM script), not a
# file of its own. Messages are [image, text] and the chat template is applied with
# add_vision_id=True, which makes Qwen2-VL's template write "Picture 1: " before the image; the
# prompt below spells that out so that our builder (which does not pass add_vision_id) renders the
# same string. No system message is passed, so the template's default system turn applies.
_VISUALQUALITY_SOURCE = "TianheWu/VisualQuality-R1 README.md@a16dcdb64eea03a27afdb411d43cc1c9d723a1b2"
_VISUALQUALITY_QUESTION = (
    "You are doing the image quality assessment task. Here is the question: "
    "What is your overall rating on the quality of this picture? The rating should be a float between 1 and 5, "
    "rounded to two decimal places, with 1 representing very poor quality and 5 representing excellent quality."
)
_VISUALQUALITY_THINKING_TEMPLATE = (
    "{Question} First output the thinking process in <think> </think> tags and then output the final "
    "answer with only one score in <answer> </answer> tags."
)
_VISUALQUALITY_NON_THINKING_TEMPLATE = (
    "{Question} Please only output the final answer with only one score in <answer> </answer> tags."
)
_ADD_VISION_ID = "Picture 1: "

# --- Aes-R1 as released (Liu et al., ICLR 2026) ----------------------------------------------------
# The release scores through LLaMA-Factory's scripts/vllm_infer.py (README "Inference":
# `--template qwen2_vl --temperature 0.6`, every other setting that script's default: top_p 0.7,
# top_k 50, max_new_tokens 1024, repetition_penalty 1.0, at hiyouga/LLaMA-Factory
# 9b5baa97f0f5e48d4eab7ae29d1486d05c69af41 and unchanged through
# ff6d4d12eeb035d6ce06805a5733dd7b29f2ac30). The prompt is the user turn of the released example
# data, data/example.json, which LLaMA-Factory sends as it is, replacing `<image>` in place with the
# image and adding the qwen2_vl template's default system turn. The released repository parses
# answers only in its RAPO rewards (train/rapo/src/open-r1-multimodal/src/open_r1/rapo.py, same
# commit): last <answer> block else the whole text, then `extract_first_number`.
#
# The released prompt asks for "a float between 1 and 5" while the released example answers (0.25,
# 0.80), the rewards (Gaussian σ = 0.1, binary thresholds 0.07 / 0.1, uniform(0, 1) fallback) and
# the paper's Appendix B are on 0-1: the checkpoint is trained to answer on 0-1, so that is the
# preset's scale.
_AESR1_RELEASE_SOURCE = "ssssmark/AesR1 data/example.json@6e19b49be9905f574642bdbc0e9885f2161ca147"
_AESR1_RELEASE_PROMPT = (
    "\nYou are an aesthetic expert. What is your overall rating on the aesthetic of this picture <image> ? "
    "The rating should be a float between 1 and 5, rounded to two decimal places, with 1 representing very "
    "poor quality and 5 representing excellent quality. Your task:\n1. Think through the question, put all "
    "your thinking or reasoning process in only one pair <think>...</think> tags.\n2. Then provide the "
    "correct rating inside only one pair of <answer>...</answer> tags.\n3. No any other information or text "
    "outside of these tags. \n\nE.g. your response should be:\n<think>...</think><answer>...</answer>\n\n"
)

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        # The sampling settings are RAPOConfig's rollout defaults, which `aesr1 score` samples with.
        Preset(
            name="aesr1",
            prompt=SCORING_PROMPT,
            system_prompt=None,
            scale=UNIT,
            decimals=2,
            source="aesr1",
            temperature=1.0,
            top_p=1.0,
            max_new_tokens=1024,
            top_k=0,
            parser=parse_aesr1,
        ),
        Preset(
            name="aesr1-release",
            prompt=_AESR1_RELEASE_PROMPT,
            system_prompt=None,
            scale=UNIT,
            decimals=2,
            source=_AESR1_RELEASE_SOURCE,
            temperature=0.6,
            top_p=0.7,
            max_new_tokens=1024,
            top_k=50,
            parser=parse_aesr1_release,
        ),
        # Settings of the README's vLLM script, the one that sets every sampling parameter (the
        # transformers scripts pass do_sample=True, top_k=50, top_p=1 and max_new_tokens 2048 or 512,
        # leaving the temperature to the checkpoint's generation_config.json).
        Preset(
            name="visualquality-r1",
            prompt=IMAGE_PLACEHOLDER.join(
                [_ADD_VISION_ID, _VISUALQUALITY_THINKING_TEMPLATE.format(Question=_VISUALQUALITY_QUESTION)]
            ),
            system_prompt=None,
            scale=Scale(1.0, 5.0),
            decimals=2,
            source=_VISUALQUALITY_SOURCE,
            temperature=0.1,
            top_p=1.0,
            max_new_tokens=512,
            top_k=50,
            parser=parse_visualquality_r1,
        ),
        # The README's "non-thinking" mode (for use as a reward model). Its scripts set no
        # temperature, so the vLLM script's sampling settings are used; prompt and parser are exact.
        Preset(
            name="visualquality-r1-nothink",
            prompt=IMAGE_PLACEHOLDER.join(
                [
                    _ADD_VISION_ID,
                    _VISUALQUALITY_NON_THINKING_TEMPLATE.format(Question=_VISUALQUALITY_QUESTION),
                ]
            ),
            system_prompt=None,
            scale=Scale(1.0, 5.0),
            decimals=2,
            source=_VISUALQUALITY_SOURCE,
            temperature=0.1,
            top_p=1.0,
            max_new_tokens=512,
            top_k=50,
            parser=parse_visualquality_r1,
        ),
    )
}


def get_preset(name: str | Preset) -> Preset:
    """The preset called `name` (a Preset is returned as it is). Unknown names raise ValueError
    listing the known ones."""
    if isinstance(name, Preset):
        return name
    if not isinstance(name, str):
        raise TypeError(f"preset must be a name or a Preset, got {type(name).__name__}")
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None


def chat_messages(preset: str | Preset) -> list[dict[str, Any]]:
    """The chat messages of one scoring request under `preset`: its system turn, when it has one,
    then the user turn of `aesr1.modeling.chat.user_message`. `build_inputs` takes only a prompt, so
    a preset with a system prompt is rendered through this (see `render_prompt`)."""
    from aesr1.modeling.chat import user_message

    preset = get_preset(preset)
    messages = user_message(preset.prompt)
    if preset.system_prompt is not None:
        messages.insert(0, {"role": "system", "content": preset.system_prompt})
    return messages


def render_prompt(processor, preset: str | Preset) -> str:
    """The chat-template string of a scoring request under `preset`, ending with the assistant
    header (`aesr1.modeling.chat.prompt_text` with the preset's system turn)."""
    return processor.apply_chat_template(chat_messages(preset), add_generation_prompt=True, tokenize=False)


__all__ = [
    "PRESETS",
    "Preset",
    "chat_messages",
    "get_preset",
    "parse_aesr1",
    "parse_aesr1_release",
    "parse_visualquality_r1",
    "render_prompt",
]
