"""Parsing of model text: `critique_of`, `parse_verdict` (with its JSON search) and the template
judge's word checks agree with their regex/`json` definitions on ordinary text and stay linear in
the text on hostile text (repeated or unclosed tags, whitespace runs, deep nesting...)."""

from __future__ import annotations

import json
import re
import sys
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aesr1.score
from aesr1.aescot import jsontext, judges
from aesr1.aescot.jsontext import json_objects
from aesr1.aescot.judges import (
    JudgeParseError,
    _word_hits,
    attribute_contradictions,
    parse_verdict,
    verdict_band,
)
from aesr1.data.formats import generic
from aesr1.data.formats.generic import _last_answer
from aesr1.score import critique_of

try:
    from re import _compiler as sre_compile
    from re import _constants as sre_constants
    from re import _parser as sre_parse
except ImportError:  # Python 3.10
    import sre_compile
    import sre_constants
    import sre_parse

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
# Hostile text: linear cost
#
# Elapsed time depends on the machine and its load, so linearity is checked on a count that depends
# only on the code and the text: `cost` counts the Python lines a parser runs plus the characters
# its work in C reads (the text's str methods, the parser modules' regexes and json calls). The
# count grows 4 times when a linear parser's text grows 4 times, 16 times for a quadratic parser.

SMALL = 1_500  # characters; each parser's cost is compared at SMALL and 4 * SMALL characters
LINEAR_RATIO = 6.0  # cost(4n) / cost(n): 4 for a linear parser, 16 for a quadratic one

_REAL = SimpleNamespace(re=re, json=json)  # the modules, while the names `re` and `json` are patched
_METER = SimpleNamespace(cost=0, root=None)


def _charge(chars: int) -> None:
    _METER.cost += chars


class _Text(str):
    """The text given to a parser: its methods charge the characters they read, so that a parser
    calling `find` again from every tag is seen reading the rest of the text every time."""

    def find(self, sub, start=None, end=None):
        found = str.find(self, sub, start, end)
        window = range(len(self))[start:end]
        _charge(found + len(sub) - window.start if found >= 0 else len(window))
        return found

    def index(self, sub, start=None, end=None):
        found = self.find(sub, start, end)
        if found < 0:
            raise ValueError("substring not found")
        return found

    def rfind(self, sub, start=None, end=None):
        found = str.rfind(self, sub, start, end)
        window = range(len(self))[start:end]
        _charge(window.stop - found if found >= 0 else len(window))
        return found

    def rindex(self, sub, start=None, end=None):
        found = self.rfind(sub, start, end)
        if found < 0:
            raise ValueError("substring not found")
        return found

    def __contains__(self, sub):
        return self.find(sub) >= 0

    def startswith(self, prefix, *window):
        _charge(sum(map(len, prefix)) if isinstance(prefix, tuple) else len(prefix))
        return str.startswith(self, prefix, *window)

    def endswith(self, suffix, *window):
        _charge(sum(map(len, suffix)) if isinstance(suffix, tuple) else len(suffix))
        return str.endswith(self, suffix, *window)

    def __getitem__(self, key):
        part = str.__getitem__(self, key)
        _charge(len(part))
        return part


def _reading_all(name):
    method = getattr(str, name)

    def read_all(self, *args, **kwargs):
        _charge(len(self))
        return method(self, *args, **kwargs)

    return read_all


for _name in (
    "count",
    "replace",
    "split",
    "rsplit",
    "splitlines",
    "partition",
    "rpartition",
    "lower",
    "upper",
    "casefold",
    "strip",
    "lstrip",
    "rstrip",
    "translate",
    "encode",
    "__add__",
):
    setattr(_Text, _name, _reading_all(_name))

_CONSUMING = {sre_constants.LITERAL, sre_constants.NOT_LITERAL, sre_constants.IN, sre_constants.ANY}
_REPEATS = {
    sre_constants.MAX_REPEAT,
    sre_constants.MIN_REPEAT,
    getattr(sre_constants, "POSSESSIVE_REPEAT", None),
}
_LOOKAROUND = {sre_constants.ASSERT, sre_constants.ASSERT_NOT}
_AT_END = (sre_constants.AT, sre_constants.AT_END_STRING)
_ANY_CHAR = (
    sre_constants.IN,
    [
        (sre_constants.CATEGORY, sre_constants.CATEGORY_SPACE),
        (sre_constants.CATEGORY, sre_constants.CATEGORY_NOT_SPACE),
    ],
)


def _reaching(state, items):
    """`items` (a parsed pattern) rewritten so that, matched with ``endpos = p + k``, it matches
    at p when an attempt of the pattern at p reads k characters: every character it reads may
    instead be the end of the string, and a lookahead that reads to the end accepts the rest."""

    def sub(data):
        return sre_parse.SubPattern(state, data)

    out = []
    for op, av in items:
        if op in _CONSUMING:
            out.append((sre_constants.BRANCH, (None, [sub([(op, av)]), sub([_AT_END])])))
        elif op in _REPEATS:
            out.append((op, (av[0], av[1], sub(_reaching(state, av[2].data)))))
        elif op is sre_constants.SUBPATTERN:
            out.append((op, (*av[:3], sub(_reaching(state, av[3].data)))))
        elif op is sre_constants.BRANCH:
            out.append((op, (None, [sub(_reaching(state, alt.data)) for alt in av[1]])))
        elif op in _LOOKAROUND and av[0] > 0:
            to_end = (sre_constants.ASSERT, (1, sub([*_reaching(state, av[1].data), _AT_END])))
            rest = (sre_constants.MAX_REPEAT, (0, sre_constants.MAXREPEAT, sub([_ANY_CHAR])))
            out.append((sre_constants.BRANCH, (None, [sub([to_end, rest]), sub([(op, av)])])))
        else:  # zero-width, or reads backwards
            out.append((op, av))
    return out


def _first(items, atoms):
    """Adds to `atoms` the items of a parsed pattern that can read an attempt's first character;
    returns whether the pattern can match without consuming one, None when unsure."""
    for op, av in items:
        if op in _CONSUMING:
            atoms.append((op, av))
            return False
        if op in _REPEATS:
            inner = _first(av[2].data, atoms)
            if inner is None or (not inner and av[0] > 0):
                return inner
        elif op is sre_constants.SUBPATTERN:
            inner = _first(av[3].data, atoms)
            if not inner:
                return inner
        elif op is sre_constants.BRANCH:
            alternatives = [_first(alt.data, atoms) for alt in av[1]]
            if None in alternatives or not any(alternatives):
                return None if None in alternatives else False
        elif op in _LOOKAROUND and av[0] > 0:
            if _first(av[1].data, atoms) is None:
                return None
        elif op not in _LOOKAROUND and op is not sre_constants.AT:
            return None
    return True


class _Regex:
    """A compiled pattern whose calls charge the characters the regex engine reads.

    Each match attempt is charged: a successful one its match, a failed one the longest stretch
    it could have read (from where it starts, as far as the text could still have turned into a
    match). A lazy ``<think>(.*?)</think>`` on "<think>" * n thus costs the rest of the text at
    every tag, as it does in the engine, even though `findall` is called once."""

    def __init__(self, pattern):
        self._pattern = pattern
        parsed = sre_parse.parse(pattern.pattern, pattern.flags)
        data = _reaching(parsed.state, parsed.data) + [_AT_END]
        self._reach = sre_compile.compile(sre_parse.SubPattern(parsed.state, data), pattern.flags).match
        # Where an attempt can read more than one character: few places, found by one scan.
        atoms = []
        if _first(parsed.data, atoms) is None:
            atoms = [_ANY_CHAR]
        alternatives = [sre_parse.SubPattern(parsed.state, [atom]) for atom in atoms]
        first = sre_parse.SubPattern(parsed.state, [(sre_constants.BRANCH, (None, alternatives))])
        self._first = sre_compile.compile(first, pattern.flags).finditer if atoms else None

    def __getattr__(self, name):
        return getattr(self._pattern, name)

    def _attempts(self, string, start, stop, end):
        """Charges failed attempts at start..stop-1 of the text up to `end`."""
        reach, read = self._reach, max(stop - start, 0)
        if self._first is None:
            return _charge(read)
        for candidate in self._first(string, start, min(stop, end)):
            p = candidate.start()
            if reach(string, p, p + 1):  # the attempt goes past its first character
                lo, k = 1, 2
                while k <= end - p and reach(string, p, p + k):
                    lo, k = k, 2 * k
                hi = min(k, end - p + 1)
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    lo, hi = (mid, hi) if reach(string, p, p + mid) else (lo, mid)
                read += lo
        _charge(read)

    def _window(self, string, pos, endpos):
        end = min(max(endpos, 0), len(string))
        return min(max(pos, 0), end), end

    def match(self, string, pos=0, endpos=sys.maxsize):
        found = self._pattern.match(string, pos, endpos)
        self._anchored(string, pos, endpos, found)
        return found

    def fullmatch(self, string, pos=0, endpos=sys.maxsize):
        found = self._pattern.fullmatch(string, pos, endpos)
        self._anchored(string, pos, endpos, found)
        return found

    def _anchored(self, string, pos, endpos, found):
        pos, end = self._window(string, pos, endpos)
        if found is None:
            self._attempts(string, pos, pos + 1, end)
        else:
            _charge(found.end() - pos + 1)

    def finditer(self, string, pos=0, endpos=sys.maxsize):
        position, end = self._window(string, pos, endpos)
        for found in self._pattern.finditer(string, pos, endpos):
            self._attempts(string, position, found.start(), end)
            _charge(found.end() - found.start() + 1)
            position = found.end()
            yield found
        self._attempts(string, position, end + 1, end)

    def search(self, string, pos=0, endpos=sys.maxsize):
        return next(self.finditer(string, pos, endpos), None)

    def findall(self, string, pos=0, endpos=sys.maxsize):
        for _ in self.finditer(string, pos, endpos):
            pass
        return self._pattern.findall(string, pos, endpos)

    def _whole(self, method, string, *args, **kwargs):
        for _ in self.finditer(string):
            pass
        return getattr(self._pattern, method)(*args, **kwargs)

    def split(self, string, *args, **kwargs):
        return self._whole("split", string, string, *args, **kwargs)

    def sub(self, repl, string, *args, **kwargs):
        return self._whole("sub", string, repl, string, *args, **kwargs)

    def subn(self, repl, string, *args, **kwargs):
        return self._whole("subn", string, repl, string, *args, **kwargs)


class _Re:
    """The `re` module, handing out `_Regex` patterns."""

    def __init__(self):
        self._patterns = {}

    def __getattr__(self, name):
        return getattr(_REAL.re, name)

    def compile(self, pattern, flags=0):
        if isinstance(pattern, _Regex):
            return pattern
        real = _REAL.re.compile(pattern, flags)
        if real not in self._patterns:
            self._patterns[real] = _Regex(real)
        return self._patterns[real]

    def match(self, pattern, string, flags=0):
        return self.compile(pattern, flags).match(string)

    def fullmatch(self, pattern, string, flags=0):
        return self.compile(pattern, flags).fullmatch(string)

    def search(self, pattern, string, flags=0):
        return self.compile(pattern, flags).search(string)

    def finditer(self, pattern, string, flags=0):
        return self.compile(pattern, flags).finditer(string)

    def findall(self, pattern, string, flags=0):
        return self.compile(pattern, flags).findall(string)

    def split(self, pattern, string, maxsplit=0, flags=0):
        return self.compile(pattern, flags).split(string, maxsplit)

    def sub(self, pattern, repl, string, count=0, flags=0):
        return self.compile(pattern, flags).sub(repl, string, count)

    def subn(self, pattern, repl, string, count=0, flags=0):
        return self.compile(pattern, flags).subn(repl, string, count)


def _error_read(error, start):
    # The decoder read up to the error, then the error counted the lines before it.
    return error.pos - start + error.pos


class _Decoder(json.JSONDecoder):
    def raw_decode(self, s, idx=0):
        try:
            value, end = super().raw_decode(s, idx)
        except _REAL.json.JSONDecodeError as error:
            _charge(_error_read(error, idx))
            raise
        _charge(end - idx)
        return value, end


class _JsonDecoderModule:
    def __getattr__(self, name):
        return getattr(_REAL.json.decoder, name)

    def scanstring(self, s, end, strict=True):
        try:
            value, stop = _REAL.json.decoder.scanstring(s, end, strict)
        except _REAL.json.JSONDecodeError as error:
            _charge(_error_read(error, end))
            raise
        _charge(stop - end)
        return value, stop


class _Json:
    """The `json` module, its decoding charged."""

    JSONDecoder = _Decoder
    decoder = _JsonDecoderModule()

    def __getattr__(self, name):
        return getattr(_REAL.json, name)

    def loads(self, s, **kwargs):
        _charge(len(s))
        return _REAL.json.loads(s, **kwargs)


_PARSER_MODULES = [jsontext, judges, aesr1.score, generic, sys.modules[__name__]]
_UNCOUNTED = {
    value.__code__
    for owner in (_Text, _Regex, _Re, _Decoder, _JsonDecoderModule, _Json)
    for value in vars(owner).values()
    if callable(value) and hasattr(value, "__code__")
}


def _count_lines(frame, event, arg):
    if event == "line":
        _METER.cost += 1
    return _count_lines


def _trace_calls(frame, event, arg):
    # Frames the parser runs are counted; the proxies' own frames, and all they call, are not.
    back = frame.f_back
    if frame.f_code in _UNCOUNTED or not (back is _METER.root or back.f_trace is _count_lines):
        return None
    return _count_lines


def cost(function, text: str) -> int:
    """Python lines run plus characters read in C by ``function(text)``."""
    with pytest.MonkeyPatch.context() as patch:
        re_proxy = _Re()
        for module in _PARSER_MODULES:
            for name, value in list(vars(module).items()):
                if value is _REAL.re:
                    patch.setattr(module, name, re_proxy)
                elif value is _REAL.json:
                    patch.setattr(module, name, _Json())
                elif isinstance(value, _REAL.re.Pattern):
                    patch.setattr(module, name, re_proxy.compile(value))
        text = _Text(text)
        _METER.cost, _METER.root = 0, sys._getframe()
        previous = sys.gettrace()
        sys.settrace(_trace_calls)
        try:
            function(text)
        except JudgeParseError:
            pass
        finally:
            sys.settrace(previous)
            _METER.root = None
    return _METER.cost


def cost_ratio(function, make_text, n: int = SMALL) -> float:
    """cost(4n) / cost(n), `make_text(n)` being about n characters of text."""
    return cost(function, make_text(4 * n)) / cost(function, make_text(n))


def assert_linear(function, make_text):
    ratio = cost_ratio(function, make_text)
    assert ratio < LINEAR_RATIO, (
        f"{function.__name__} costs {ratio:.1f} times more on 4 times the text {make_text(40)!r}..."
    )


# The check is only as good as `cost` is at seeing the extra reading of a quadratic parser, where
# it happens: in the regex engine (the lazy tag regex, the tokeniser rerun before each occurrence
# of a word: the definitions above), in the JSON decoder (at every brace), in str.find (from every
# tag) or in Python loops. Parsers that read too much each way must fail it.


def last_answer_refinding(text):
    last, start = None, text.find("<answer>")
    while start >= 0:
        end = text.find("</answer>", start + len("<answer>"))
        if end >= 0:
            last = text[start + len("<answer>") : end]
        start = text.find("<answer>", start + 1)
    return last


def closing_braces_rewalked(text):
    chars, closed = list(text), 0
    for i, char in enumerate(chars):
        if char == "{":
            depth = 0
            for other in chars[i:]:
                depth += (other == "{") - (other == "}")
                if depth == 0:
                    closed += 1
                    break
    return closed


def word_hits_good(text):
    return word_hits_ref(text, "good")


QUADRATIC = {
    "lazy regex": (critique_ref, lambda n: "<think>" * (n // 7)),
    "tokens before every word": (word_hits_good, lambda n: "good " * (n // 5)),
    "decoder at every brace": (json_objects_ref, lambda n: "{" * n),
    "find from every tag": (last_answer_refinding, lambda n: "<answer>" * (n // 8)),
    "loop from every brace": (closing_braces_rewalked, lambda n: "{" * n),
}


@pytest.mark.parametrize("name", list(QUADRATIC))
def test_cost_catches_quadratic_parsers(name):
    function, make_text = QUADRATIC[name]
    # Small texts: quadratic parsers are slow, and slower still when traced.
    assert cost_ratio(function, make_text, n=200) > 12


def test_cost_of_linear_parsers():
    # The same parsers on text they read once: a lazy regex stops at each closing tag.
    assert 3 < cost_ratio(critique_ref, lambda n: "<think>a</think>" * (n // 16)) < LINEAR_RATIO
    assert 3 < cost_ratio(last_answer_refinding, lambda n: "<answer>a</answer>" * (n // 18)) < LINEAR_RATIO


N = 200_000  # characters of hostile text for the results

HOSTILE = {
    "repeated <think>": lambda n: "<think>" * (n // 7),
    "repeated <think>, closed at the end": lambda n: "<think>" * (n // 7) + "</think>",
    "repeated <answer>": lambda n: "<answer>" * (n // 8),
    "many answers": lambda n: "<answer>0.5</answer>" * (n // 20),
    "nested think": lambda n: "<think><think>x</think>" * (n // 22),
    "unclosed think and answer": lambda n: "<think>a<answer>" * (n // 16),
    "whitespace run": lambda n: " " * n + "<think>",
    "newline run": lambda n: "\n" * n,
    "open braces": lambda n: "{" * n,
    "open objects": lambda n: '{"' * (n // 2),
    "unclosed key-values": lambda n: '{"a":1,' * (n // 7),
    "nested objects": lambda n: '{"a":' * (n // 5),
    "nested arrays": lambda n: '{"a":[' * (n // 6),
    "strings in objects": lambda n: '{"a":"' * (n // 6),
    "a verdict after braces": lambda n: "{" * n + '{"consistent": false, "factual_errors": ["x"]}',
}

# The cost checks come first: on a quadratic parser they fail in a moment, where the results on
# N characters would take minutes.


@pytest.mark.parametrize("name", list(HOSTILE))
def test_critique_of_is_linear(name):
    assert_linear(critique_of, HOSTILE[name])
    assert isinstance(critique_of(HOSTILE[name](N)), str)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_parse_verdict_is_linear(name):
    assert_linear(parse_verdict, HOSTILE[name])
    try:
        result = parse_verdict(HOSTILE[name](N))
    except JudgeParseError as error:
        result = error
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


@pytest.mark.parametrize("unit, count", [("good ", 10_000), ("a'good ", 7_000), ("x good ", 7_000)])
def test_template_judge_word_checks_are_linear(unit, count):
    # The judge reads the two words before every occurrence of a verdict or attribute word; a
    # critique that repeats one is model output too.
    def make_text(n):
        return unit * (n // len(unit))

    def circles(n):
        return make_text(n).replace("good", "circle")

    assert_linear(verdict_band, make_text)
    assert_linear(contradictions, circles)
    text = unit * count
    assert verdict_band(text) == "good"
    assert contradictions(text.replace("good", "circle"))


# ---------------------------------------------------------------------------------------------
# Score labels of generic datasets: "<answer>…</answer>" text (the last block) or a bare number.


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["<answer>", "</answer>", "0.5", " ", "x", "\n"]), max_size=24).map("".join))
def test_last_answer_matches_findall(text):
    found = re.findall(r"<answer>(.*?)</answer>", text, flags=re.DOTALL)
    assert _last_answer(text) == (found[-1] if found else None)


LABELS = {
    "repeated <answer>": (lambda n: "<answer>" * (n // 8), None),
    "an answer, then repeated <answer>": (lambda n: "<answer>0.5</answer>" + "<answer>" * (n // 8), "0.5"),
}


@pytest.mark.parametrize("name", list(LABELS))
def test_label_answers_parse_in_linear_time(name):
    make_text, answer = LABELS[name]
    assert_linear(_last_answer, make_text)
    assert _last_answer(make_text(N)) == answer
