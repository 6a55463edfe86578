"""`aesr1.Scorer` and `python -m aesr1.score`: scripted completions, folders, failures; the CLI on a
tiny model overfit to one critique so the real generate -> parse path yields a score."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import OVERFIT_TARGET
from fixtures_data import write_garbage, write_image
from PIL import Image

from aesr1.score import Scorer, critique_of, expand_images, summary

TARGET = OVERFIT_TARGET


class Scripted:
    """Answers call c's image i with answers[10 c + i] (calls counted from 1)."""

    def __init__(self, answers):
        self.answers, self.batches = answers, []

    def __call__(self, images, num_samples):
        self.batches.append(len(images))
        return [self.answers[len(self.batches) * 10 + i][:num_samples] for i in range(len(images))]


def test_critique_extraction():
    assert critique_of("<think> Soft light. </think><answer>0.50</answer>") == "Soft light."
    assert critique_of("no tags, just words <answer>0.3</answer>") == "no tags, just words"
    assert critique_of("<think>unfinished thought") == "unfinished thought"


def test_scorer_with_scripted_completions(tmp_path):
    for i in range(3):
        write_image(tmp_path / "photos" / f"{i}.jpg", i)
    write_image(tmp_path / "photos" / "nested" / "deep.png", 9)
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    bad = write_garbage(tmp_path / "bad.jpg")
    answers = {
        10: ["<think>a</think><answer>0.20</answer>", "<think>b</think><answer>0.40</answer>"],
        20: ["garbled", "<think>c</think><answer>0.90</answer>"],
        30: ["garbled", "also garbled"],
        40: ["<think>d</think><answer>0.55</answer>", "<think>e</think><answer>1.70</answer>"],
    }
    scripted = Scripted(answers)
    scorer = Scorer(predictor=scripted, num_samples=2, temperature=1.0, batch_size=2)
    assert scorer.mode == "sample"
    pil = Image.new("RGB", (16, 16), (1, 2, 3))
    results = scorer([tmp_path / "photos", bad, pil])
    # sample mode draws each image's samples in a call of its own (a per-image seed); the
    # unreadable file is never sent
    assert scripted.batches == [1, 1, 1, 1]
    assert [r.image for r in results] == [str(tmp_path / "photos" / f"{i}.jpg") for i in range(3)] + [
        str(bad),
        "<PIL image 4>",
    ]
    first, second, third, unreadable, in_memory = results
    assert first.score == pytest.approx(0.30) and first.critique == "a" and first.parse_failures == 0
    assert first.std == pytest.approx(0.10) and first.median == pytest.approx(0.30)
    assert first.mode == "sample" and first.scale.name == "0-1" and first.to_dict()["scale"] == "0-1"
    assert second.score == pytest.approx(0.90) and second.critique == "c" and second.scores == [None, 0.9]
    assert third.score is None and third.parse_failures == 2 and third.critique == "garbled"
    assert unreadable.error and unreadable.score is None and unreadable.completions == []
    assert in_memory.score == pytest.approx(0.55)  # 1.70 lies outside [0, 1]: unparseable
    assert summary(results) == {
        "images": 5,
        "scored": 3,
        "unreadable": 1,
        "completions": 8,
        "parse_failures": 4,
    }
    assert len(expand_images(tmp_path / "photos", recursive=True)) == 4


def test_scorer_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="model must be"):
        Scorer()
    with pytest.raises(TypeError, match="processor must be given"):
        Scorer(object())
    with pytest.raises(ValueError, match="num_samples must be 1"):
        Scorer(predictor=lambda images, k: [], mode="greedy", num_samples=3)
    with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
        Scorer(predictor=lambda images, k: [])(tmp_path / "nowhere.jpg")
    with pytest.raises(FileNotFoundError, match="config.json"):
        Scorer(tmp_path)
    write_image(tmp_path / "x.png")
    with pytest.raises(ValueError, match="predictor returned 0 results for 1 images"):
        Scorer(predictor=lambda images, k: [])(tmp_path / "x.png")


def run_cli(*args, cwd):
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "aesr1.score", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
    )


def test_score_cli_on_tiny_model_prints_critique_and_score(tmp_path, overfit_model_dir, capsys):
    for i in range(2):
        write_image(tmp_path / "photos" / f"{i}.png", i, 56)
    write_garbage(tmp_path / "photos" / "broken.jpg")
    common = ("--model", str(overfit_model_dir), "--max-new-tokens", "24", "--no-progress")
    run = run_cli(str(tmp_path / "photos"), "--jsonl", *common, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert [os.path.basename(r["image"]) for r in rows] == ["0.png", "1.png", "broken.jpg"]
    for row in rows[:2]:
        assert row["score"] == pytest.approx(0.72) and row["critique"] == "Warm light and bold colour."
        assert row["completions"] == [TARGET] and row["parse_failures"] == 0
    assert rows[2]["error"] and rows[2]["score"] is None
    assert "3 images: 2 scored, 1 skipped (bad image), 0 of 2 completions unparseable" in run.stderr
    assert f"skipped {tmp_path / 'photos' / 'broken.jpg'}: " in run.stderr

    from aesr1.score.__main__ import main  # the same command in-process (saves two interpreter starts)

    assert main([str(tmp_path / "photos" / "0.png"), *common]) == 0
    table = capsys.readouterr().out
    assert "0.72" in table and "Warm light and bold" in table and "Critique" in table
    assert main([str(tmp_path / "photos" / "0.png"), "--csv", "--scale", "1-5", *common]) == 0
    import csv

    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert len(rows) == 1 and rows[0]["scale"] == "1-5" and rows[0]["mode"] == "greedy"
    assert float(rows[0]["score"]) == pytest.approx(1 + 4 * 0.72) and rows[0]["revision"]
    assert main([str(tmp_path / "nope.png"), *common]) == 2
    assert "nope.png" in capsys.readouterr().err
