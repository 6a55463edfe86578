"""`python -m aesr1.aescot` on unreadable input: one ``error:`` line that names the path and the
cause, exit status 2, no traceback."""

from __future__ import annotations

import pytest

from aesr1.aescot.__main__ import main as cli_main


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("name", ["missing.csv", "missing.jsonl"])
def test_build_with_a_missing_score_file_says_so(tmp_path, capsys, name):
    data = tmp_path / name
    code = cli_main(
        ["build", "--data", str(data), "--expert", "template", "--output-dir", str(tmp_path / "o")]
    )
    line = error_line(capsys)
    assert code == 2
    assert str(data) in line and "not found" in line and "unknown dataset" not in line


def test_build_with_a_folder_named_like_a_score_file(tmp_path, capsys):
    folder = tmp_path / "scores.csv"
    folder.mkdir()
    assert (
        cli_main(
            ["build", "--data", str(folder), "--expert", "template", "--output-dir", str(tmp_path / "o")]
        )
        == 2
    )
    line = error_line(capsys)
    assert str(folder) in line and "is a directory" in line


def test_build_keeps_unknown_dataset_names(tmp_path, capsys):
    assert (
        cli_main(
            [
                "build",
                "--data",
                "nosuchset:/x.csv",
                "--expert",
                "template",
                "--output-dir",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "unknown dataset 'nosuchset'" in error_line(capsys)


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (b"garbage{\n", "line 1 is not JSON"),
        (b'{"critique": "fine"}\n\n[1, 2]\n', "line 3 is a JSON list"),
        (b"\xff\xfe\n", "not UTF-8"),
    ],
)
def test_check_leakage_names_the_file_and_the_line(tmp_path, capsys, content, cause):
    path = tmp_path / "garbage.json"
    path.write_bytes(content)
    assert cli_main(["check-leakage", "--file", str(path)]) == 2
    line = error_line(capsys)
    assert str(path) in line and cause in line


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_check_leakage_with_an_unreadable_path(tmp_path, capsys, kind):
    path = tmp_path / "critiques.jsonl"
    if kind == "folder":
        path.mkdir()
    assert cli_main(["check-leakage", "--file", str(path)]) == 2
    line = error_line(capsys)
    assert str(path) in line and ("No such file" in line if kind == "missing" else "Is a directory" in line)


def test_build_into_a_path_under_a_regular_file_is_one_error_line(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "o"
    data = f"synthetic:{tmp_path / 'syn'}?n=4&image_size=32"
    code = cli_main(["build", "--data", data, "--expert", "template", "--output-dir", str(out)])
    line = error_line(capsys)
    assert code == 2 and f"{tmp_path / 'file'}" in line and "Errno" not in line
    assert "Not a directory" in line or "File exists" in line
