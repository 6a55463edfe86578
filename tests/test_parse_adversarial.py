"""Parsing of model text: `critique_of`, `parse_verdict` (with its JSON search) and the template
judge's word checks agree with their regex/`json` definitions on ordinary text and stay linear in
the text on hostile text (repeated or unclosed tags, whitespace runs, deep nesting...)."""

from __future__ import annotations

import json
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aesr1.aescot.jsontext import json_objects
from aesr1.aescot.judges import (
    JudgeParseError,
    _word_hits,
    attribute_contradictions,
    parse_verdict,
    verdict_band,
)
from aesr1.score import critique_of

N = 200_000  # characters of hostile text; a quadratic parser takes minutes on it
TIME_BOUND_S = 2.0

# ---------------------------------------------------------------------------------------------
# Definitions: what the parsers mean, written the direct way (fine on short text).


def critique_ref(completion: str) -> str:
    found = re.findall(r"<think>(.*?)</think>", completion, flags=re.DOTALL)
    if found:
        return found[0].strip()
    return re.sub(r"<answer>.*?</answer>", "", completion, flags=re.DOTALL).replace("<think>", "").strip()


def json_objects_ref(text: str) -> list[dict]:
    decoder, found = json.JSONDecoder(), []
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        found.append(obj)
    return found


def word_hits_ref(sentence: str, word: str) -> list[bool]:
    lowered = sentence.lower()
    negators = ("not", "never", "hardly", "barely", "isn't", "wasn't", "no", "nor", "far from")
    return [
        any(n in re.findall(r"[\w']+", lowered[: m.start()])[-2:] for n in negators)
        for m in re.finditer(rf"\b{re.escape(word)}\b", lowered)
    ]


def verdict_or_error(text: str) -> str:
    try:
        return repr(parse_verdict(text))
    except JudgeParseError as error:
        return f"JudgeParseError: {error}"


TAGS = ["<think>", "</think>", "<answer>", "</answer>", "<think", "answer>", "</"]
tagged_text = st.lists(
    st.one_of(st.sampled_from(TAGS), st.sampled_from([" ", "\n", "a", "0.5", "é", "<", ">"])), max_size=25
).map("".join)

JSON_BITS = [
    "{",
    "}",
    "[",
    "]",
    '"',
    ":",
    ",",
    " ",
    "1",
    "-",
    "0",
    ".",
    "e",
    "\\",
    "u",
    "null",
    "true",
    "NaN",
]
JSON_BITS += [
    '"k"',
    '"consistent"',
    '\\"',
    "\\u00e9",
    '{"a":',
    "1.5",
    "01",
    "\x01",
    "x",
    '"factual_errors"',
    "[]",
]
json_text = st.lists(st.sampled_from(JSON_BITS), max_size=30).map("".join)


def _json_values(depth: int = 0):
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from(["s", "{", "é\n", ""]))
    if depth > 2:
        return scalars
    inner = _json_values(depth + 1)
    return st.one_of(
        scalars,
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["a", "b", "consistent", ""]), inner, max_size=3),
    )


@st.composite
def mangled_json(draw):
    """Serialised objects in prose, then a few characters deleted, inserted or doubled."""
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        parts.append(json.dumps(draw(_json_values()), indent=draw(st.sampled_from([None, 1]))))
        parts.append(draw(st.sampled_from(["", " text ", "```json\n", "\n```", "{", "}", '"'])))
    chars = list("".join(parts))
    for _ in range(draw(st.integers(0, 3))):
        if not chars:
            break
        i = draw(st.integers(0, len(chars) - 1))
        op = draw(st.sampled_from(["delete", "insert", "double"]))
        if op == "delete":
            del chars[i]
        else:
            chars.insert(i, chars[i] if op == "double" else draw(st.sampled_from(list('{}[]",: \\0'))))
    return "".join(chars)


# ---------------------------------------------------------------------------------------------
# Same results as the definitions on ordinary text


def test_critique_examples():
    assert critique_of("<think> Soft light. </think><answer>0.50</answer>") == "Soft light."
    assert critique_of("a<think>one</think><think>two</think>") == "one"
    assert critique_of("<think><think>in</think>") == "<think>in"
    assert critique_of("</think><think>x") == "</think>x"
    assert critique_of("p <answer>1</answer> q <answer>2") == "p  q <answer>2"


@settings(max_examples=500, deadline=None)
@given(tagged_text)
def test_critique_of_matches_its_definition(text):
    assert critique_of(text) == critique_ref(text)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_text, mangled_json()))
def test_json_objects_match_raw_decode_at_every_brace(text):
    try:
        want = json_objects_ref(text)
    except (RecursionError, ValueError):  # json's own failures; the parser reads these fine
        return
    got = list(json_objects(text))
    assert json.dumps(got) == json.dumps(want)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(tagged_text, mangled_json()), max_size=3).map("".join))
def test_parse_verdict_matches_its_definition(text):
    """The first object with a `consistent` field, once `<think>` blocks are removed as by regex."""
    got = verdict_or_error(text)
    stripped = re.sub(r"<think>.*?</think>", "", text, flags=re.DOTALL)
    objects = [o for o in json_objects_ref(stripped) if "consistent" in o]
    if objects:
        assert got == verdict_or_error(json.dumps(objects[0]))
    else:
        assert got.startswith("JudgeParseError: no JSON verdict")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(["good", "not", "no", " ", "'", "isn't", "x", ".", "far from", "g", "Good"]),
        max_size=20,
    ).map("".join),
    st.sampled_from(["good", "no", "far from", "x"]),
)
def test_word_hits_match_their_definition(sentence, word):
    assert _word_hits(sentence, word) == word_hits_ref(sentence, word)


def test_verdicts_json_cannot_parse():
    verdict = '{"consistent": true, "factual_errors": []}'
    # Nested deeper than json's recursion limit: no RecursionError, and the verdict inside is found.
    deep = '{"x":' * 5000 + verdict + "}" * 5000
    assert parse_verdict(deep).consistent
    with pytest.raises(JudgeParseError):
        parse_verdict('{"a":' * 5000)
    # An integer past int()'s digit limit spoils its object only, not the search.
    assert parse_verdict('{"n": ' + "1" * 5000 + "} " + verdict).factually_accurate
    with pytest.raises(JudgeParseError, match="nested too deeply"):
        parse_verdict('{"consistent": true, "factual_errors": [' + "[" * 100_000 + "]" * 100_000 + "]}")


# ---------------------------------------------------------------------------------------------
# Hostile text: linear time


def within_bound(function, text):
    start = time.perf_counter()
    try:
        result = function(text)
    except JudgeParseError as error:
        result = error
    elapsed = time.perf_counter() - start
    assert elapsed < TIME_BOUND_S, (
        f"{function.__name__} took {elapsed:.1f} s on {text[:40]!r}... ({len(text)} chars)"
    )
    return result


HOSTILE = {
    "repeated <think>": "<think>" * (N // 7),
    "repeated <think>, closed at the end": "<think>" * (N // 7) + "</think>",
    "repeated <answer>": "<answer>" * (N // 8),
    "many answers": "<answer>0.5</answer>" * (N // 20),
    "nested think": "<think><think>x</think>" * (N // 22),
    "unclosed think and answer": "<think>a<answer>" * (N // 16),
    "whitespace run": " " * N + "<think>",
    "newline run": "\n" * N,
    "open braces": "{" * N,
    "open objects": '{"' * (N // 2),
    "unclosed key-values": '{"a":1,' * (N // 7),
    "nested objects": '{"a":' * (N // 5),
    "nested arrays": '{"a":[' * (N // 6),
    "strings in objects": '{"a":"' * (N // 6),
    "a verdict after braces": "{" * N + '{"consistent": false, "factual_errors": ["x"]}',
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_critique_of_is_linear(name):
    assert isinstance(within_bound(critique_of, HOSTILE[name]), str)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_parse_verdict_is_linear(name):
    result = within_bound(parse_verdict, HOSTILE[name])
    if name == "a verdict after braces":
        assert not result.consistent and result.factual_errors == ["x"]
    else:
        assert isinstance(result, JudgeParseError)


def test_hostile_results():
    assert critique_of("<think>" * (N // 7)) == ""
    assert critique_of("<think>" * (N // 7) + "</think>") == "<think>" * (N // 7 - 1)
    assert critique_of("<answer>" * (N // 8)) == "<answer>" * (N // 8)
    assert critique_of("<answer>0.5</answer>" * (N // 20)) == ""


_ATTRIBUTES = dict(
    subject="square", palette="muted", exposure=0.0, thirds=0.5, sharpness=0.5, noise=0.5, contrast=0.5
)


def contradictions(text):
    return attribute_contradictions(text, _ATTRIBUTES)


@pytest.mark.parametrize("text", ["good " * 10_000, "a'good " * 7_000, "x good " * 7_000])
def test_template_judge_word_checks_are_linear(text):
    # The judge reads the two words before every occurrence of a verdict or attribute word; a
    # critique that repeats one is model output too.
    assert within_bound(verdict_band, text) == "good"
    assert within_bound(contradictions, text.replace("good", "circle"))


# ---------------------------------------------------------------------------------------------
# Score labels of generic datasets: "<answer>…</answer>" text (the last block) or a bare number.


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["<answer>", "</answer>", "0.5", " ", "x", "\n"]), max_size=24).map("".join))
def test_last_answer_matches_findall(text):
    from aesr1.data.formats.generic import _last_answer

    found = re.findall(r"<answer>(.*?)</answer>", text, flags=re.DOTALL)
    assert _last_answer(text) == (found[-1] if found else None)


def test_label_answers_parse_in_linear_time():
    from aesr1.data.formats.generic import _last_answer

    for text in ("<answer>" * (N // 8), "<answer>0.5</answer>" + "<answer>" * (N // 8)):
        started = time.perf_counter()
        _last_answer(text)
        assert time.perf_counter() - started < TIME_BOUND_S
