"""Reading JSONL files with `aesr1.jsonio.jsonl_objects`."""

from __future__ import annotations

import pytest

from aesr1.jsonio import jsonl_objects


def test_objects_with_their_line_numbers(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text('{"id": "a"}\n\n  \n{"id": "b", "x": [1]}\n{"id": "c"}')
    assert list(jsonl_objects(path)) == [(1, {"id": "a"}), (4, {"id": "b", "x": [1]}), (5, {"id": "c"})]
    # a last line without its newline is what a kill mid-write leaves
    assert [n for n, _ in jsonl_objects(path, skip_partial_last_line=True)] == [1, 4]
    path.write_text('{"id": "a"}\n{"id": "c", "x": ')
    assert list(jsonl_objects(path, skip_partial_last_line=True)) == [(1, {"id": "a"})]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"id": "a"}\ngarbage{\n', "line 2 is not JSON (Expecting value at column 1)"),
        (b'{"id": "a"}\n\n[1, 2]\n', "line 3 is a JSON list, expected an object"),
        (b'{"id": "a"}\n"text"\n', "line 2 is a JSON str, expected an object"),
        (b'{"id": "a"}\n\xff\xfe\n', "not UTF-8 text (invalid start byte at byte 12)"),
    ],
)
def test_errors_name_the_file_and_the_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError) as caught:
        list(jsonl_objects(path))
    assert str(caught.value) == f"{str(path)!r}: {message}"


def test_a_missing_file_is_an_os_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        list(jsonl_objects(tmp_path / "missing.jsonl"))
    assert caught.value.filename == str(tmp_path / "missing.jsonl")
