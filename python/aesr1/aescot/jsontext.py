"""JSON objects embedded in model text, found in time linear in the text.

A judge's answer holds its verdict as a JSON object among prose, code fences or reasoning. The
straightforward search, ``json.JSONDecoder().raw_decode`` at every ``{``, is quadratic on hostile
text: every failed attempt builds a `JSONDecodeError`, whose line and column count the text up to
the failure, and nested objects are decoded again at every level (deep nesting even raises
RecursionError). `json_objects` yields the same objects in the same order with one parser that
remembers the outcome at every object start it passes, so no object start is parsed twice, and
keeps its own stack, so nesting depth is unlimited.

Grammar and values are those of `json.loads`: ``NaN``/``Infinity``/``-Infinity`` accepted, control
characters in strings rejected, a repeated key keeps its last value. An integer too long for `int`
(Python's 4300-digit limit) makes its object undecodable instead of raising ValueError.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

_WS = re.compile(r"[ \t\n\r]*")
# A complete string token; `json.decoder.scanstring` decodes one without error.
_STRING = r'"[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*"'
_KEY = re.compile(_STRING + r"[ \t\n\r]*:[ \t\n\r]*")
# Any scalar as the C scanner reads it; groups 1-3: a number's integer part, fraction, exponent.
_SCALAR = re.compile(
    _STRING + r"|(-?(?:0|[1-9][0-9]*))(\.[0-9]+)?([eE][-+]?[0-9]+)?|null|true|false|NaN|Infinity|-Infinity"
)
_CONSTANTS = {
    "null": None,
    "true": True,
    "false": False,
    "NaN": float("nan"),
    "Infinity": float("inf"),
    "-Infinity": float("-inf"),
}
# Where an object can start: "{", then "}" or a key and its colon; any other "{" fails at once.
# Filtering with one regex keeps the parser, slow per token, to the few worth a look. A lookahead,
# so that a candidate inside another one's key is still found.
_OBJECT_START = re.compile(r"\{(?=[ \t\n\r]*(?:\}|" + _STRING + r"[ \t\n\r]*:))")
_ARRAY = object()  # the key slot of an open array

#: Object start -> (end, value) where an object starts, None where none does.
Memo = dict[int, "tuple[int, dict] | None"]


def _scalar_value(match: re.Match) -> Any:
    """The value of a `_SCALAR` match; ValueError for an integer too long for int()."""
    token = match.group()
    if token[0] == '"':
        return json.decoder.scanstring(token, 1)[0]
    if match.group(1) is None:
        return _CONSTANTS[token]
    return float(token) if match.group(2) or match.group(3) else int(token)


def _parse_object(text: str, start: int, memo: Memo) -> None:
    """Parses the object at `start` (a "{"), recording in `memo` every object that closes (its end
    and value) and, on failure, every object still open: parsed on its own, a nested object reads
    the same tokens, so it fails where the outer one did, or closes with the same value."""
    stack: list[list] = []  # open containers, innermost last: [start, items, key or _ARRAY]
    ws, key_at, scalar_at = _WS.match, _KEY.match, _SCALAR.match
    pos, expect_value, value = start, True, None
    while True:
        if expect_value:
            char = text[pos : pos + 1]
            if char == "{":
                known = memo.get(pos, False)
                if known is None:
                    break
                if known is not False:
                    (pos, value), expect_value = known, False
                    continue
                frame = [pos, [], None]
                stack.append(frame)
                pos = ws(text, pos + 1).end()
                if text.startswith("}", pos):
                    expect_value = False
                    value = _close(stack, pos, memo)
                    pos += 1
                    continue
                key = key_at(text, pos)
                if key is None:
                    break
                frame[2] = json.decoder.scanstring(text, pos + 1)[0]
                pos = key.end()
            elif char == "[":
                stack.append([pos, [], _ARRAY])
                pos = ws(text, pos + 1).end()
                if text.startswith("]", pos):
                    expect_value = False
                    value = _close(stack, pos, memo)
                    pos += 1
            else:
                match = scalar_at(text, pos)
                if match is None:
                    break
                try:
                    value = _scalar_value(match)
                except ValueError:
                    break
                pos, expect_value = match.end(), False
            continue
        if not stack:
            return  # the object at `start` closed, and `_close` recorded it
        frame = stack[-1]
        is_array = frame[2] is _ARRAY
        frame[1].append(value if is_array else (frame[2], value))
        pos = ws(text, pos).end()
        char = text[pos : pos + 1]
        if char == ",":
            pos = ws(text, pos + 1).end()
            expect_value = True
            if not is_array:
                key = key_at(text, pos)
                if key is None:
                    break
                frame[2] = json.decoder.scanstring(text, pos + 1)[0]
                pos = key.end()
        elif char == ("]" if is_array else "}"):
            value = _close(stack, pos, memo)
            pos += 1
        else:
            break
    for frame in stack:
        if frame[2] is not _ARRAY:
            memo[frame[0]] = None


def _close(stack: list[list], pos: int, memo: Memo) -> Any:
    """Pops the innermost container, closed by the character at `pos`, and returns its value."""
    opened, items, key = stack.pop()
    if key is _ARRAY:
        return items
    value = dict(items)
    memo[opened] = (pos + 1, value)
    return value


def json_objects(text: str) -> Iterator[dict]:
    """Every object that ``json.JSONDecoder().raw_decode(text, i)`` decodes at some ``{`` at index
    i, in order of i (so an object comes before the objects nested in it)."""
    memo: Memo = {}
    for match in _OBJECT_START.finditer(text):
        start = match.start()
        if start not in memo:
            _parse_object(text, start, memo)
        found = memo[start]
        if found is not None:
            yield found[1]
