"""Programmatic score-leakage filter (paper §3.2, Appendix E.2: e_leak of the error vector E_i).

An AesCoT critique is written by an expert who was told the hidden score; it leaks when it states
the score (a number, a percentage, a fraction, a spelled-out score such as "eight out of ten"),
uses rating vocabulary ("score", "rated", "top marks", "on a scale of"), or refers to the hidden
information or the instructions ("the provided rating", "as instructed", "I was told").

Why hand-written regular expressions: no library detects *score* leakage, and a generic number
parser (e.g. spelled-number converters) flags ordinary description ("one subject", "two figures",
"at first glance", "the rule of thirds", "a one-point perspective"). The patterns below flag
spelled-out numbers only in score-like contexts, and every digit except a short list of technical
forms that cannot carry a score (list enumeration at a line start, years and decades, focal lengths,
apertures, shutter speeds, ISO, aspect ratios, angles). Decimals, percentages and x/10 are exactly
the forms the score itself takes. The behaviour is pinned by a table of hand-written positive and
negative sentences in `tests/leakage_cases.py`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

#: Kinds of leakage a hit can have; the filter reason lists them.
LEAK_KINDS = ("number", "percentage", "fraction", "spelled_number", "rating_word", "hidden_reference")

_UNITS = (
    "zero|nought|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|"
    "fifteen|sixteen|seventeen|eighteen|nineteen"
)
_TENS = "twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety"
#: Any spelled-out number up to a hundred ("seven", "seventy", "seventy-two", "a hundred").
_NUM = rf"(?:(?:{_TENS})(?:[-\s](?:{_UNITS}))?|{_UNITS}|(?:a|one)\s+hundred|hundred)"
#: The same without "one", which is mostly a pronoun ("a strong one", "no one", "one subject").
_NUM_NOT_ONE = rf"(?:(?:{_TENS})(?:[-\s](?:{_UNITS}))?|(?!one\b)(?:{_UNITS})|(?:a|one)\s+hundred)"
#: What may follow a number used as a score: end of clause, "out of", "overall", "in my view"...
_SCORE_TAIL = (
    r"(?=\s*(?:[.,;:!?)\"'\]]|$|out\b|overall\b|all\s+told\b|on\s+(?:a|the|my|this|any)\s+scale\b"
    r"|for\s+(?:me|this|the|its)\b|in\s+my\b|at\s+best\b|at\s+most\b|at\s+least\b))"
)
_SCORE_ADJ = (
    r"(?:(?:solid|strong|perfect|respectable|decent|middling|modest|mere|clear|low|high|mid|easy|firm|"
    r"generous|fair|weak|good|bad|poor|honest|safe|comfortable|reasonable|definite)\s+)?"
)
_SCORE_VERB = (
    r"(?:rates?|rated|scores?|scored|deserves?|deserved|earns?|earned|gets?|merits?|warrants?|"
    r"receives?|give\s+it|gave\s+it|giving\s+it|award\s+it|worth|sits\s+at|lands\s+at|comes\s+in\s+at|"
    r"sits\s+around|lands\s+around|hovers\s+around|hovering\s+around)"
)
_NEAR = r"(?:(?:a|an|around|about|roughly|nearly|almost|just|at|close\s+to|near|maybe|perhaps)\s+)*"
_QUALIFIED = (
    r"(?:hidden|private|secret|concealed|undisclosed|provided|given|assigned|supplied|stated|known|"
    r"true|target|expected|reference|ground[-\s]truth|original|actual|underlying)"
)
_HIDDEN_OBJECT = (
    r"(?:aesthetic\s+)?(?:score|rating|value|number|grade|label|variables?|information|info|"
    r"assessment|evaluation|verdict)"
)


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


#: (kind, compiled pattern) pairs, checked in order on the normalised text.
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # Digits anywhere, as one token ("0.72", "7/10", "60th", "8"), and vulgar fractions ("¾").
    ("number", _rx(r"\d(?:[\d.,/:]*\d)?(?:st|nd|rd|th)?")),
    ("fraction", _rx(r"[\u00bc-\u00be\u2150-\u215e\u2044]")),
    ("percentage", _rx(r"%|\bper\s?cent(?:s|age)?\b|\bpercentiles?\b")),
    # Spelled-out fractions of the unit interval and fractions of ten/a hundred.
    ("fraction", _rx(rf"\b{_NUM}[-\s]+(?:tenths?|hundredths?)\b|\b(?:tenths|hundredths)\b")),
    ("spelled_number", _rx(rf"\b{_NUM}\s+out\s+of\s+(?:a\s+)?{_NUM}\b")),
    ("spelled_number", _rx(r"\bout\s+of\s+(?:ten|a\s+hundred|one\s+hundred|hundred)\b")),
    # Decimals read aloud: "zero point seven", "seven point five", "point eight five", "point eight."
    ("spelled_number", _rx(rf"\b(?:{_NUM}|oh)\s+point\s+{_NUM}\b")),
    ("spelled_number", _rx(rf"\bpoint\s+(?:{_UNITS})\s+(?:{_UNITS})\b")),
    ("spelled_number", _rx(rf"\bpoint\s+(?:{_UNITS}){_SCORE_TAIL}")),
    # Compound numbers read like a percentage score ("seventy-two"), but not angles or counts of years.
    (
        "spelled_number",
        _rx(
            rf"\b(?:{_TENS})[-\s](?:one|two|three|four|five|six|seven|eight|nine)\b"
            r"(?![-\s]*(?:degrees?|years?|mm|millimet|seconds?|minutes?|hours?|days?)\b)"
        ),
    ),
    # A number used as the grade itself: "a solid seven.", "deserves an eight", "a perfect ten".
    ("spelled_number", _rx(r"\ba\s+perfect\s+(?:ten|score)\b")),
    ("spelled_number", _rx(rf"\b(?:a|an)\s+{_SCORE_ADJ}{_NUM_NOT_ONE}\b{_SCORE_TAIL}")),
    ("spelled_number", _rx(rf"\b{_SCORE_VERB}\s+{_NEAR}{_SCORE_ADJ}{_NUM_NOT_ONE}\b{_SCORE_TAIL}")),
    ("spelled_number", _rx(rf"\b{_NUM}[-\s]?star\b")),
    ("spelled_number", _rx(rf"\b(?:from|between)\s+(?:zero|nought|one)\s+(?:to|and)\s+{_NUM}\b")),
    # Rating vocabulary.
    ("rating_word", _rx(r"\bscor(?:e|es|ed|ing)\b")),
    ("rating_word", _rx(r"\b(?:ratings?|rated|raters?)\b")),
    (
        "rating_word",
        _rx(r"\b(?:i|we)(?:'d|'ll|\s+would|\s+will|\s+can|\s+could|\s+might|\s+should)?\s+rate\b"),
    ),
    ("rating_word", _rx(r"\brate\s+(?:it|this|the\s+(?:image|photo|photograph|picture|shot|work))\b")),
    ("rating_word", _rx(r"\brates\s+(?:highly|high|well|poorly|low|above|below|among|near|around)\b")),
    ("rating_word", _rx(r"\b(?:i|we)(?:'d|\s+would)?\s+grade\b|\bgrade\s+(?:it|this)\b")),
    ("rating_word", _rx(r"\b(?:passing|failing|letter)\s+grade\b")),
    ("rating_word", _rx(r"\b(?:full|top|high|low|perfect|poor)\s+marks\b")),
    ("rating_word", _rx(r"\bon\s+a\s+scale\s+(?:of|from)\b|\bscale\s+of\s+(?:zero|one|ten|nought)\b")),
    ("rating_word", _rx(rf"\b{_NUM}[-\s]point\s+scale\b")),
    ("rating_word", _rx(r"\bdecimals?\b|\bnumeric(?:al)?\b|\bmean\s+opinion\b")),
    ("rating_word", re.compile(r"\bMOS\b")),
    # References to the hidden score, the instructions or the annotation.
    ("hidden_reference", _rx(rf"\b{_QUALIFIED}\s+{_HIDDEN_OBJECT}\b")),
    (
        "hidden_reference",
        _rx(r"\b(?:score|rating|label|value|grade)\s+(?:provided|given|supplied|assigned)\b"),
    ),
    ("hidden_reference", _rx(r"\b(?:the|these|those|your|my|its|their|following)\s+instructions?\b")),
    ("hidden_reference", _rx(r"\bas\s+(?:instructed|requested|directed|specified|required)\b")),
    (
        "hidden_reference",
        _rx(
            r"\b(?:i|we)(?:'ve|'m|'re)?\s+(?:was\s+|were\s+|have\s+been\s+|had\s+been\s+|am\s+|are\s+|been\s+)?"
            r"(?:told|informed|instructed|asked\s+to|provided\s+with|given\s+(?:a|an|the)\s+"
            r"(?:score|rating|value|number|label))\b"
        ),
    ),
    ("hidden_reference", _rx(r"\b(?:the|this|my|your|system|user)\s+prompt\b")),
    ("hidden_reference", _rx(r"\bground[-\s]truth\b|\bdata\s?sets?\b|\bannotat(?:ors?|ions?|ed)\b")),
    (
        "hidden_reference",
        _rx(
            r"\bwithout\s+(?:revealing|mentioning|disclosing|stating|giving\s+away)\b"
            r"|\b(?:i|we)\s+(?:cannot|can't|won't|will\s+not|must\s+not|mustn't|shouldn't|should\s+not|may\s+not)"
            r"\s+(?:reveal|mention|disclose|state|share)\b"
        ),
    ),
    ("hidden_reference", _rx(r"\b(?:confidential|private|privileged)\s+(?:information|data|details?)\b")),
)


#: Numbers that describe the picture or the craft and cannot carry a score; they are masked before
#: the digit check. Rating-shaped forms stay flagged: a shutter speed needs its unit ("1/250s";
#: "1/100" alone could be a score out of a hundred), "7/10" and "1/10" never qualify, and "8" alone
#: is not a focal length.
_TECHNICAL_NUMBERS = re.compile(
    r"(?:"
    r"^[ \t>*_#-]*\d{1,2}[.)](?=\s)"  # list / heading enumeration at a line start: "1.", "**2)"
    r"|\b(?:1[5-9]|20)\d\d(?:s\b)?"  # years and decades: 1970s, 2019
    r"|'\d0s\b|\b\d0s\b"  # '70s, 80s
    r"|\b\d{1,2}(?:st|nd|rd|th)[-\s]century\b"  # 19th-century
    r"|\b\d{1,4}(?:\.\d)?\s?mm\b"  # focal lengths, film formats: 35mm, 50 mm
    r"|\bf/\d{1,2}(?:\.\d)?\b"  # apertures: f/2.8
    r"|\b1/(?:1[5-9]|[2-9]\d|\d{3,5})\s?(?:s|sec|secs|seconds?)\b"  # shutter speeds with a unit: 1/250s
    r"|\bISO\s?\d{2,6}\b"  # ISO 400
    r"|\b(?:16:9|9:16|4:3|3:4|3:2|2:3|1:1|21:9|5:4|4:5)\b"  # aspect ratios
    r"|\b[248]K\b|\b3D\b"  # 4K, 3D
    r"|\b\d{1,3}(?:-|\s)?(?:degrees?|°)"  # angles: 45-degree, 90 degrees
    r")",
    re.IGNORECASE | re.MULTILINE,
)


def _mask_technical_numbers(text: str) -> str:
    return _TECHNICAL_NUMBERS.sub(lambda m: re.sub(r"\d", "#", m.group(0)), text)


@dataclass(frozen=True)
class LeakHit:
    """One leaking span: its kind (one of `LEAK_KINDS`), the matched text and its offsets."""

    kind: str
    text: str
    start: int
    end: int


def normalise_text(text: str) -> str:
    """NFKC (full-width digits become ASCII, "½" becomes "1⁄2"), typographic quotes and dashes unified.

    NFKC keeps the length of most Latin text but not of ligatures and vulgar fractions, so hit
    offsets refer to the normalised string.
    """
    text = unicodedata.normalize("NFKC", text)
    return (
        text.replace("\u2019", "'")
        .replace("\u2018", "'")
        .replace("\u201c", '"')
        .replace("\u201d", '"')
        .translate({ord(c): "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2212"})
    )


def find_leaks(text: str) -> list[LeakHit]:
    """All leaking spans of `text`, sorted by position; overlapping hits of different kinds are kept."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    normalised = normalise_text(text)
    # Masking keeps every offset, so hits from both texts index the normalised string.
    masked = _mask_technical_numbers(normalised)
    hits = {
        (kind, match.start(), match.end()): LeakHit(
            kind, normalised[match.start() : match.end()], match.start(), match.end()
        )
        for kind, pattern in _PATTERNS
        for match in pattern.finditer(masked if kind == "number" else normalised)
    }
    return sorted(hits.values(), key=lambda hit: (hit.start, hit.end, hit.kind))


def leak_reason(hits: list[LeakHit], max_listed: int = 5) -> str:
    """A short human-readable reason such as ``number '0.72'; rating_word 'rated'``."""
    listed = "; ".join(f"{hit.kind} {hit.text!r}" for hit in hits[:max_listed])
    more = len(hits) - max_listed
    return listed + (f"; +{more} more" if more > 0 else "")
