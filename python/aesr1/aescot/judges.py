"""Judges check the two model-audited error types of §3.2 / Appendix E.2 and answer a structured verdict:

- e_align, reasoning-score consistency: does the critique's reasoning and final judgment match the score?
- e_fact, factual errors: does the critique describe things that are not in the image?

`ChatJudge` and `TransformersJudge` ask a model (the same backends as the experts) for a JSON object;
`TemplateJudge` checks synthetic critiques against the attributes the image was drawn from.
"""

from __future__ import annotations

import asyncio
import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from aesr1.aescot.chat_client import ChatClient, EndpointConfig, image_data_url
from aesr1.aescot.construction import chat_content, judge_prompt
from aesr1.aescot.experts import LocalModel, stable_seed
from aesr1.aescot.jsontext import json_objects
from aesr1.data.records import ScoredImage
from aesr1.prompts import score_bin


@dataclass
class JudgeVerdict:
    """A judge's structured answer for one critique."""

    consistent: bool
    factually_accurate: bool
    consistency_reason: str = ""
    factual_errors: list[str] = field(default_factory=list)


class JudgeParseError(ValueError):
    """The judge answered, but not with a usable verdict."""


@runtime_checkable
class Judge(Protocol):
    name: str

    def validate(self, items: Sequence[ScoredImage]) -> None: ...

    async def judge(self, item: ScoredImage, critique: str) -> JudgeVerdict: ...

    async def aclose(self) -> None: ...


_TRUE = {"true", "yes", "y", "1", "consistent", "accurate", "pass", "passed"}
_FALSE = {"false", "no", "n", "0", "inconsistent", "inaccurate", "fail", "failed"}
_NO_ERROR = {"", "none", "n/a", "na", "no", "nothing", "no errors", "none found", "no factual errors"}


def _as_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise JudgeParseError(f"verdict field {key!r} must be a boolean, got {value!r}")


def _without_think_blocks(text: str) -> str:
    """`text` without its ``<think>…</think>`` blocks, as ``re.sub(r"<think>.*?</think>", "", text,
    flags=re.DOTALL)`` removes them but in linear time: that regex rescans the rest of the text from
    every unclosed ``<think>``, quadratic on an answer such as "<think>" * n."""
    pieces, position = [], 0
    while (start := text.find("<think>", position)) >= 0:
        end = text.find("</think>", start + len("<think>"))
        if end < 0:  # no later <think> has a closing tag either
            break
        pieces.append(text[position:start])
        position = end + len("</think>")
    pieces.append(text[position:])
    return "".join(pieces)


def parse_verdict(text: str) -> JudgeVerdict:
    """The first JSON object in `text` that has a `consistent` field, as a `JudgeVerdict`.

    Tolerates code fences, a leading `<think>` block and prose around the object. A verdict whose
    `factual_errors` lists real errors counts as not factually accurate even if it says otherwise.
    Linear in the length of `text`, whatever it holds: judges' answers are model output.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    text = _without_think_blocks(text)
    for obj in json_objects(text):
        if "consistent" not in obj:
            continue
        consistent = _as_bool(obj["consistent"], "consistent")
        errors_field = obj.get("factual_errors", [])
        errors = [errors_field] if isinstance(errors_field, str) else list(errors_field or [])
        try:
            errors = [str(e).strip() for e in errors if str(e).strip().lower().rstrip(".") not in _NO_ERROR]
            reason = str(obj.get("consistency_reason", ""))
        except RecursionError:  # str() of a value nested thousands of levels deep
            raise JudgeParseError("verdict fields are nested too deeply to read") from None
        if "factually_accurate" in obj:
            accurate = _as_bool(obj["factually_accurate"], "factually_accurate") and not errors
        elif "factual_errors" in obj:
            accurate = not errors
        else:
            raise JudgeParseError("verdict has neither 'factually_accurate' nor 'factual_errors'")
        return JudgeVerdict(consistent, accurate, reason, errors)
    raise JudgeParseError(f"no JSON verdict with a 'consistent' field in: {text[:200]!r}")


class ChatJudge:
    """A judge behind an OpenAI-compatible endpoint; sees the image, the score and the critique.

    Args:
        endpoint: an `EndpointConfig`, or the expert's `ChatClient` to share its limits.
        json_mode: send ``response_format={"type": "json_object"}`` (OpenAI, vLLM and SGLang support it).
        parse_retries: extra requests when the answer holds no parsable verdict.
        max_tokens: completion cap.
    """

    def __init__(
        self,
        endpoint: EndpointConfig | ChatClient,
        *,
        json_mode: bool = True,
        parse_retries: int = 1,
        temperature: float | None = 0.0,
        max_tokens: int | None = 512,
    ) -> None:
        self.client = endpoint if isinstance(endpoint, ChatClient) else ChatClient(endpoint)
        if parse_retries < 0:
            raise ValueError(f"parse_retries must be >= 0, got {parse_retries!r}")
        self.json_mode = json_mode
        self.parse_retries = parse_retries
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.name = f"chat:{self.client.config.model}"

    def validate(self, items: Sequence[ScoredImage]) -> None:
        return None

    async def judge(self, item: ScoredImage, critique: str) -> JudgeVerdict:
        url = await asyncio.to_thread(image_data_url, item.image, self.client.config.max_image_side)
        messages = [{"role": "user", "content": chat_content(judge_prompt(item.score, critique), url)}]
        params: dict[str, Any] = {}
        if self.temperature is not None:
            params["temperature"] = self.temperature
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens
        if self.json_mode:
            params["response_format"] = {"type": "json_object"}
        error: JudgeParseError | None = None
        for _ in range(self.parse_retries + 1):
            result = await self.client.complete(messages, **params)
            try:
                return parse_verdict(result.text)
            except JudgeParseError as parse_error:
                error = parse_error
        raise error

    async def aclose(self) -> None:
        await self.client.aclose()


class TransformersJudge:
    """A judge run on a local vision-language model (greedy decoding)."""

    def __init__(self, model: LocalModel, *, max_new_tokens: int = 512, seed: int = 0) -> None:
        if not isinstance(model, LocalModel):
            raise TypeError(f"model must be a LocalModel, got {type(model).__name__}")
        self.local = model
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.name = f"transformers:{model.name}"

    def validate(self, items: Sequence[ScoredImage]) -> None:
        return None

    async def judge(self, item: ScoredImage, critique: str) -> JudgeVerdict:
        answer = await self.local.generate(
            item.image,
            judge_prompt(item.score, critique),
            max_new_tokens=self.max_new_tokens,
            temperature=1.0,
            do_sample=False,
            seed=stable_seed(self.seed, f"judge/{item.source}:{item.id}"),
        )
        return parse_verdict(answer.text)

    async def aclose(self) -> None:
        return None


# ---------------------------------------------------------------------------------------------------
# Template judge for the synthetic dataset. No model can see a 56x56 procedural image better than the
# attributes it was drawn from, so the checks compare the critique's words with those attributes.

#: Words of an overall judgment, by the bin they express (Appendix E.2 bins).
VERDICT_WORDS: dict[str, tuple[str, ...]] = {
    "bad": (
        "weak",
        "poor",
        "bad",
        "dull",
        "failed",
        "fails",
        "unsuccessful",
        "disappointing",
        "mediocre",
        "amateurish",
        "flawed",
        "unappealing",
        "lacklustre",
        "lackluster",
        "muddled",
        "confused",
        "awkward",
    ),
    "fair": (
        "average",
        "fair",
        "middling",
        "modest",
        "decent",
        "ordinary",
        "passable",
        "adequate",
        "competent",
        "uneven",
        "mixed",
        "acceptable",
        "unremarkable",
    ),
    "good": (
        "strong",
        "fine",
        "excellent",
        "accomplished",
        "striking",
        "compelling",
        "beautiful",
        "superb",
        "outstanding",
        "polished",
        "masterful",
        "lovely",
        "impressive",
        "remarkable",
        "good",
        "great",
    ),
}
_NEGATORS = ("not", "never", "hardly", "barely", "isn't", "wasn't", "no", "nor", "far from")
_SHAPES = ("circle", "square", "triangle", "diamond", "ring")
_PALETTE_WORDS = {
    "complementary": ("complementary",),
    "analogous": ("analogous",),
    "triadic": ("triadic",),
    # Not "washed": "washed out" describes exposure (write_critique's Exposure sentence), not colour.
    "muted": ("muted", "washed-out colours", "washed-out palette"),
    "clashing": ("clashing", "clash", "fight each other"),
}


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


_TOKEN = re.compile(r"[\w']+")


def _word_hits(sentence: str, word: str) -> list[bool]:
    """For each occurrence of `word`: whether it is negated by one of the two preceding words
    (the last two word tokens, ``[\\w']+``, of the text before it)."""
    lowered = sentence.lower()
    matches = list(re.finditer(rf"\b{re.escape(word)}\b", lowered))
    if not matches:
        return []
    # Tokenised once, not once per occurrence: re-reading the text before every occurrence is
    # quadratic in a critique that repeats the word.
    tokens = [(m.start(), m.end()) for m in _TOKEN.finditer(lowered)]
    ends = [end for _, end in tokens]
    hits = []
    for match in matches:
        cut = match.start()
        # Tokens ending by `cut` are whole in the text before it; the next one may straddle `cut`,
        # and is then cut short as it would be in that text.
        index = bisect.bisect_right(ends, cut)
        before = [lowered[s:e] for s, e in tokens[max(0, index - 2) : index]]
        if index < len(tokens) and tokens[index][0] < cut:
            before = [*before, lowered[tokens[index][0] : cut]][-2:]
        hits.append(any(n in before for n in _NEGATORS))
    return hits


def verdict_band(critique: str) -> str | None:
    """The bin the critique's final judgment expresses ("bad" / "fair" / "good"), None if unclear.

    Reads the last sentence (the prompt asks the expert to *end* with a judgment), falling back to
    the one before when the last carries no verdict word. Negated verdict words make it unclear.
    """
    for sentence in reversed(_sentences(critique)[-2:]):
        bands = set()
        negated = False
        for band, words in VERDICT_WORDS.items():
            for word in words:
                for is_negated in _word_hits(sentence, word):
                    negated |= is_negated
                    bands.add(band)
        if negated or len(bands) > 1:
            return None
        if bands:
            return bands.pop()
    return None


def _mentions(text: str, phrase: str) -> bool:
    return any(not negated for negated in _word_hits(text, phrase))


def attribute_contradictions(critique: str, attributes: dict[str, Any]) -> list[str]:
    """Statements of `critique` that contradict the synthetic drawing attributes (interface 1).

    Margins keep every check away from the thresholds `write_critique` uses, so only clear
    misdescriptions (another subject, another palette, the wrong exposure direction...) count.
    """
    text = critique.lower()
    errors: list[str] = []
    subject = str(attributes["subject"]).lower()
    for shape in _SHAPES:
        if shape != subject and _mentions(text, shape):
            errors.append(f"mentions a {shape} but the subject is a {subject}")
    palette = str(attributes["palette"]).lower()
    for other, words in _PALETTE_WORDS.items():
        if other != palette and any(_mentions(text, w) for w in words):
            errors.append(f"describes a {other} palette but it is {palette}")
    exposure = float(attributes["exposure"])
    if exposure > 0.15 and any(
        _mentions(text, w) for w in ("under-exposed", "underexposed", "a little dark", "too dark")
    ):
        errors.append(f"calls the image dark but it is over-exposed (exposure {exposure:+.2f})")
    if exposure < -0.15 and any(
        _mentions(text, w)
        for w in ("over-exposed", "overexposed", "a little bright", "too bright", "blown", "washed out")
    ):
        errors.append(f"calls the image bright but it is under-exposed (exposure {exposure:+.2f})")
    if abs(exposure) > 0.6 and _mentions(text, "well exposed"):
        errors.append(f"calls the image well exposed but exposure is {exposure:+.2f}")
    thirds = float(attributes["thirds"])
    if thirds < 0.25 and _mentions(text, "right on a third"):
        errors.append(f"places the subject on a third but thirds is {thirds:.2f}")
    if thirds > 0.8 and _mentions(text, "far from the thirds"):
        errors.append(f"places the subject far from the thirds but thirds is {thirds:.2f}")
    technique = (float(attributes["sharpness"]) + 1.0 - float(attributes["noise"])) / 2.0
    if technique < 0.3 and any(_mentions(text, w) for w in ("crisp and clean", "sharp and clean")):
        errors.append(f"calls the image crisp and clean but sharpness/noise quality is {technique:.2f}")
    if technique > 0.8 and any(_mentions(text, w) for w in ("blurred", "blurry", "grainy", "noisy")):
        errors.append(f"calls the image blurred or noisy but sharpness/noise quality is {technique:.2f}")
    contrast = float(attributes["contrast"])
    if contrast > 0.8 and any(_mentions(text, w) for w in ("flat, shadowless", "no modelling")):
        errors.append(f"calls the light flat but contrast is {contrast:.2f}")
    if contrast < 0.25 and any(_mentions(text, w) for w in ("strong light", "deep shadows")):
        errors.append(f"calls the light strong but contrast is {contrast:.2f}")
    return errors


class TemplateJudge:
    """Checks synthetic critiques against the attributes and score their image was drawn from.

    consistent: the final judgment's band (`verdict_band`) equals the score's bin.
    factually_accurate: no statement contradicts the attributes (`attribute_contradictions`).
    """

    name = "template"

    def validate(self, items: Sequence[ScoredImage]) -> None:
        from aesr1.data.synthetic import ATTRIBUTE_KEYS

        for item in items:
            missing = set(ATTRIBUTE_KEYS) - set(item.attributes)
            if missing:
                raise ValueError(
                    f"TemplateJudge needs synthetic items; item {item.source}:{item.id} lacks attributes "
                    f"{sorted(missing)} (use --judge chat, transformers or none)"
                )

    def judge_sync(self, item: ScoredImage, critique: str) -> JudgeVerdict:
        expected = score_bin(float(item.score))
        band = verdict_band(critique)
        if band is None:
            consistent, reason = False, "no clear overall judgment at the end of the critique"
        elif band != expected:
            consistent, reason = (
                False,
                f"final judgment reads {band!r} but the score is in the {expected!r} bin",
            )
        else:
            consistent, reason = True, f"final judgment reads {band!r}, matching the score's bin"
        errors = attribute_contradictions(critique, item.attributes)
        return JudgeVerdict(consistent, not errors, reason, errors)

    async def judge(self, item: ScoredImage, critique: str) -> JudgeVerdict:
        return self.judge_sync(item, critique)

    async def aclose(self) -> None:
        return None
