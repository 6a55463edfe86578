"""Pairwise preference (FRank, paper Eq. 3), `compare`, `rank`, the contact sheets and the `compare` /
`rank` commands, on scripted completions (no model): scores follow each image's brightness."""

from __future__ import annotations

import colorsys
import html
import json
import math
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from fixtures_data import write_garbage
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw
from scipy.stats import norm

import aesr1.score
from aesr1 import _core
from aesr1.score import Scorer, ScoreResult
from aesr1.score.commands import compare_main, rank_main
from aesr1.score.compare import Comparison, compare, preference_probability
from aesr1.score.ranking import contact_sheet_html, contact_sheet_png, rank
from aesr1.score.scales import UNIT, Scale

OFFSETS = (-0.03, 0.0, 0.01, 0.02)


def brightness_predictor(images, num_samples):
    """Answers scattered around each image's mean brightness; a pure black image gets no answer."""
    out = []
    for image in images:
        level = float(np.asarray(image, dtype=np.float64).mean() / 255.0)
        if level == 0.0:
            out.append(["I cannot judge this."] * num_samples)
            continue
        out.append(
            [
                f"<think>brightness</think><answer>{min(1.0, max(0.0, level + d)):.2f}</answer>"
                for d in OFFSETS[:num_samples]
            ]
        )
    return out


def sampling_scorer(**_ignored):
    return Scorer(predictor=brightness_predictor, num_samples=4, temperature=1.0)


def grey(path: Path, level: int, size=(32, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (level, level, level)).save(path)
    return path


def reference(mu_a, std_a, mu_b, std_b, gamma):
    return norm.cdf((mu_a - mu_b) / math.sqrt(std_a**2 + std_b**2 + gamma))


def unit_std(result) -> float:
    std = getattr(result, "std", None)
    return 0.0 if std is None else getattr(result, "scale", UNIT).spread_to_unit(std)


# ---------------------------------------------------------------------------------------------
# Eq. 3


means = st.floats(-0.5, 1.5, allow_nan=False)
stds = st.one_of(st.just(0.0), st.floats(0.0, 0.5, allow_nan=False))
gammas = st.one_of(st.just(1e-6), st.floats(1e-9, 1.0))


@settings(max_examples=300, deadline=None)
@given(means, stds, means, stds, gammas)
def test_probability_matches_scipy(mu_a, std_a, mu_b, std_b, gamma):
    got = preference_probability(mu_a, std_a, mu_b, std_b, gamma)
    want = reference(mu_a, std_a, mu_b, std_b, gamma)
    z = (mu_a - mu_b) / math.sqrt(std_a**2 + std_b**2 + gamma)
    # Both sides round z slightly differently (a product with a reciprocal against a quotient):
    # the relative effect on Φ in the lower tail grows like z²·ulp.
    assert isinstance(got, float)
    assert got == pytest.approx(want, rel=1e-14 + 4 * z * z * np.finfo(float).eps, abs=1e-300)
    # Symmetry: P(A above B) + P(B above A) = 1.
    assert got + preference_probability(mu_b, std_b, mu_a, std_a, gamma) == pytest.approx(1.0, abs=2e-16)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(means, stds, means, stds), min_size=1, max_size=30), gammas)
def test_arrays_match_scipy_elementwise(pairs, gamma):
    mu_a, std_a, mu_b, std_b = (np.array(column) for column in zip(*pairs, strict=True))
    got = preference_probability(mu_a, std_a, mu_b, std_b, gamma)
    want = norm.cdf((mu_a - mu_b) / np.sqrt(std_a**2 + std_b**2 + gamma))
    assert got.shape == mu_a.shape and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-300)
    # The native function is the same computation without the broadcasting layer.
    native = _core.preference_probability(mu_a, std_a, mu_b, std_b, gamma)
    np.testing.assert_array_equal(got, native)


def test_probability_edges_and_broadcasting():
    assert preference_probability(0.4, 0.2, 0.4, 0.0) == 0.5
    assert preference_probability(0.6, 0.0, 0.5, 0.0, gamma=0.01) == pytest.approx(norm.cdf(1.0), rel=1e-15)
    # The far tail keeps its relative accuracy instead of rounding to 0.
    assert preference_probability(0.0, 0.0, 1.0, 0.0, gamma=0.01) == pytest.approx(norm.cdf(-10.0), rel=1e-13)
    grid = preference_probability(np.array([[0.2], [0.8]]), 0.05, np.array([0.1, 0.5, 0.9]), 0.0)
    assert grid.shape == (2, 3)
    assert grid[1, 0] > grid[1, 1] > grid[1, 2] and grid[0, 0] > 0.5 > grid[0, 1]


@pytest.mark.parametrize(
    ("args", "gamma", "match"),
    [
        ((0.5, -0.1, 0.4, 0.1), 1e-6, "std_a"),
        ((0.5, 0.1, 0.4, math.inf), 1e-6, "std_b"),
        ((math.nan, 0.1, 0.4, 0.1), 1e-6, "mu_a"),
        ((0.5, 0.1, math.inf, 0.1), 1e-6, "mu_b"),
        ((0.5, 0.1, 0.4, 0.1), -1e-6, "gamma"),
        ((0.5, 0.1, 0.4, 0.1), math.nan, "gamma"),
        ((0.5, 0.0, 0.4, 0.0), 0.0, "division by zero"),
        ((0.5, 1e-200, 0.4, 0.0), 0.0, "division by zero"),  # σ² underflows to 0
        ((0.5, 1e200, 0.4, 0.0), 0.0, "too large"),
        (([0.5, 0.6], [0.1, 0.1, 0.1], 0.4, 0.1), 1e-6, "broadcast"),
    ],
)
def test_probability_rejects_bad_inputs(args, gamma, match):
    with pytest.raises(ValueError, match=match):
        preference_probability(*args, gamma=gamma)


def test_native_lengths_must_match():
    a = np.array([0.5, 0.6])
    with pytest.raises(ValueError, match="`std_b` has length 1, expected 2"):
        _core.preference_probability(a, a, a, np.array([0.1]), 1e-6)


# ---------------------------------------------------------------------------------------------
# compare


def test_compare_score_results_on_any_scale():
    a = ScoreResult("a.jpg", 4.2, "", std=0.4, scale=Scale(1, 5))
    b = ScoreResult("b.jpg", 3.0, "", std=0.2, scale=Scale(1, 5))
    result = compare(a, b)
    want = reference(0.8, 0.1, 0.5, 0.05, 1e-6)  # on the unit scale, where γ is meant
    assert result.probability == pytest.approx(want, rel=1e-14)
    assert (result.a, result.b, result.score_a, result.std_a, result.scale) == (
        "a.jpg",
        "b.jpg",
        4.2,
        0.4,
        Scale(1, 5),
    )
    assert result.winner == "a.jpg"
    assert compare(b, a).probability == pytest.approx(1 - result.probability, abs=1e-15)
    # Different scales meet on the unit scale.
    c = ScoreResult("c.jpg", 50.0, "", std=10.0, scale=Scale(0, 100))
    mixed = compare(a, c)
    assert mixed.scale == UNIT and mixed.score_a == pytest.approx(0.8) and mixed.score_b == pytest.approx(0.5)
    assert mixed.probability == pytest.approx(reference(0.8, 0.1, 0.5, 0.1, 1e-6), rel=1e-14)
    # No std (greedy decoding): σ = 0, γ alone in the denominator.
    greedy = compare(ScoreResult("g.jpg", 0.51, ""), ScoreResult("h.jpg", 0.50, ""), gamma=1e-4)
    assert greedy.probability == pytest.approx(norm.cdf(1.0), rel=1e-12)
    assert greedy.std_a == 0.0 and isinstance(greedy, Comparison)
    assert greedy.to_dict()["scale"] == "0-1"


def test_compare_scores_images_with_a_scorer(tmp_path):
    bright, dark = grey(tmp_path / "bright.png", 200), grey(tmp_path / "dark.png", 90)
    scorer = sampling_scorer()
    result = compare(bright, Image.open(dark), scorer=scorer)
    assert result.a == str(bright) and result.b.startswith("<PIL image")
    a, b = scorer([bright, dark])
    want = reference(a.score, unit_std(a), b.score, unit_std(b), 1e-6)
    assert result.probability == pytest.approx(want, rel=1e-13)
    assert result.probability > 0.99 and result.score_a == pytest.approx(a.score)
    assert result.std_a == pytest.approx(getattr(a, "std", None) or 0.0)
    # One side may already be scored.
    assert compare(a, dark, scorer=scorer).probability == pytest.approx(result.probability, rel=1e-13)


def test_compare_errors_name_the_image(tmp_path):
    good, black = grey(tmp_path / "good.png", 150), grey(tmp_path / "black.png", 0)
    garbage = write_garbage(tmp_path / "broken.jpg")
    scorer = sampling_scorer()
    with pytest.raises(ValueError, match=r"black\.png.*no score"):
        compare(good, black, scorer=scorer)
    with pytest.raises(ValueError, match=r"broken\.jpg.*no score"):
        compare(garbage, good, scorer=scorer)
    with pytest.raises(ValueError, match="empty.jpg"):
        compare(ScoreResult("empty.jpg", None, "", error="not an image"), ScoreResult("x", 0.5, ""))
    with pytest.raises(TypeError, match="b is an image.*scorer="):
        compare(ScoreResult("x", 0.5, ""), good)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        compare(good, tmp_path / "missing.png", scorer=scorer)
    with pytest.raises(ValueError, match="folder"):
        compare(good, tmp_path, scorer=scorer)


# ---------------------------------------------------------------------------------------------
# rank


def test_rank_order_ties_and_neighbours():
    results = [
        ScoreResult("b.jpg", 0.5, "", std=0.05),
        ScoreResult("c.jpg", 0.7, "", std=0.1),
        ScoreResult("a.jpg", 0.5, "", std=0.02),
        ScoreResult("d.jpg", 2.0, "", std=0.5, scale=Scale(1, 5)),  # 0.25 on the unit scale
        ScoreResult("e.jpg", 0.9, ""),  # no std
    ]
    ranked = rank(results)
    assert [e.image for e in ranked] == ["e.jpg", "c.jpg", "a.jpg", "b.jpg", "d.jpg"]
    assert [e.rank for e in ranked] == [1, 2, 3, 4, 5]
    assert ranked[0].std is None and ranked[-1].scale == Scale(1, 5) and ranked[-1].score == 2.0
    assert ranked[2].p_above_next == 0.5  # a tie
    assert ranked[1].p_above_next == pytest.approx(reference(0.7, 0.1, 0.5, 0.02, 1e-6), rel=1e-13)
    assert ranked[3].p_above_next == pytest.approx(reference(0.5, 0.05, 0.25, 0.125, 1e-6), rel=1e-13)
    assert ranked[-1].p_above_next is None
    assert ranked[0].to_dict() == {
        "rank": 1,
        "image": "e.jpg",
        "score": 0.9,
        "std": None,
        "scale": "0-1",
        "p_above_next": ranked[0].p_above_next,
    }
    # The input order does not matter.
    assert [e.image for e in rank(results[::-1])] == [e.image for e in ranked]
    single = rank([ScoreResult("only.jpg", 0.3, "")])
    assert single[0].rank == 1 and single[0].p_above_next is None


def test_rank_rejects_empty_and_unscored():
    with pytest.raises(ValueError, match="nothing to rank"):
        rank([])
    with pytest.raises(ValueError, match=r"1 of 2 images have no score \('bad.jpg'\)"):
        rank([ScoreResult("ok.jpg", 0.3, ""), ScoreResult("bad.jpg", None, "", error="unreadable")])


# ---------------------------------------------------------------------------------------------
# Contact sheets


def colourful_folder(folder: Path, n: int = 12, names=None) -> list[Path]:
    """`n` pictures of varying hue, brightness and aspect ratio, with a few discs on each."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        hue, value = i / n, 0.35 + 0.6 * ((i * 5) % n) / n
        size = (160, 107) if i % 3 else (100, 150)
        background = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.55, value))
        picture = Image.new("RGB", size, background)
        draw = ImageDraw.Draw(picture)
        for k in range(5):
            x, y, r = rng.integers(0, size[0]), rng.integers(0, size[1]), rng.integers(8, 35)
            disc = tuple(int(255 * c) for c in colorsys.hsv_to_rgb((hue + 0.3 + 0.07 * k) % 1, 0.8, 0.6))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=disc)
        name = names[i] if names and i < len(names) else f"photo_{i:02d}.jpg"
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        picture.save(path, format="PNG" if path.suffix == ".png" else "JPEG")
        paths.append(path)
    return paths


ODD_NAME = "<b>&\"odd\" 'name' $x$.png"


def test_contact_sheet_png(tmp_path):
    paths = colourful_folder(
        tmp_path / "photos", names=["a_very_long_file_name_that_needs_to_be_shortened.jpg"]
    )
    ranked = rank(sampling_scorer()(paths))
    sheet = contact_sheet_png(ranked, tmp_path / "sheet.png")
    with Image.open(sheet) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("RGB"))
    # Small images are enlarged to fill their tiles: the light tile background (#f0f0f0) shows
    # only beside them (about a quarter of the sheet), not around specks (nearly all of it).
    assert np.all(pixels == 240, axis=-1).mean() < 0.35
    # 8 best in two rows of four 300-pixel cells, the 4 others in one row below.
    assert width == 1200
    assert 3 * 300 < height < 3 * 400
    with Image.open(contact_sheet_png(ranked, tmp_path / "small.png", top=1, bottom=1)) as image:
        assert image.size[0] == 300 and 2 * 300 < image.size[1] < 2 * 450
    # An entry without a file (an in-memory image) gets a grey tile instead of failing.
    ranked_with_memory = rank([*ranked[:3], ScoreResult("<PIL image 0>", 0.4, "")])
    contact_sheet_png(ranked_with_memory, tmp_path / "memory.png", top=2, bottom=2)
    for kwargs, match in (({"top": 0, "bottom": 0}, "nothing to show"), ({"top": -1}, "top")):
        with pytest.raises(ValueError, match=match):
            contact_sheet_png(ranked, tmp_path / "x.png", **kwargs)
    with pytest.raises(ValueError, match="empty"):
        contact_sheet_png([], tmp_path / "x.png")


def test_contact_sheet_html_escapes_and_links(tmp_path):
    paths = colourful_folder(tmp_path / "photos", n=6, names=[ODD_NAME])
    ranked = rank(sampling_scorer()(paths))
    (tmp_path / "out").mkdir()
    page_path = contact_sheet_html(ranked, tmp_path / "out" / "sheet.html", top=2, bottom=1)
    page = page_path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page
    assert ODD_NAME not in page and "<b>" not in page
    assert html.escape(str(paths[0])) in page
    rows = [line for line in page.splitlines() if line.startswith("<tr")]
    assert len(rows) == 6  # every image, thumbnails only for the best 2 and the worst 1
    assert sum("<img" in row for row in rows) == 3
    assert [row.startswith('<tr class="best"') for row in rows] == [True, True, False, False, False, False]
    for row in rows:
        if "<img" in row:
            src = html.unescape(row.split('src="')[1].split('"')[0])
            assert not src.startswith("/") and (page_path.parent / unquote(src)).resolve().is_file()
    with pytest.raises(ValueError, match="empty"):
        contact_sheet_html([], tmp_path / "x.html")


# ---------------------------------------------------------------------------------------------
# Commands


@pytest.fixture
def model_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(aesr1.score, "Scorer", lambda model, **settings: sampling_scorer())
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path


def test_compare_command(tmp_path, model_dir, capsys):
    a, b = grey(tmp_path / "a.png", 120), grey(tmp_path / "b.png", 140)
    assert compare_main([str(a), str(b), "--model", str(model_dir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "P(A more aesthetic than B) = " in out and str(a) in out and str(b) in out and "±" in out
    assert compare_main([str(a), str(b), "--model", str(model_dir), "--no-progress", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    first, second = sampling_scorer()([a, b])
    want = reference(first.score, unit_std(first), second.score, unit_std(second), 1e-6)
    assert row["probability"] == pytest.approx(want, rel=1e-13) and row["probability"] < 0.5
    assert row["a"] == str(a) and row["scale"] == "0-1"


def test_compare_command_errors(tmp_path, model_dir, capsys):
    a = grey(tmp_path / "a.png", 120)
    no_config = tmp_path / "empty_model"
    no_config.mkdir()
    cases = [
        ([str(a), str(tmp_path / "nope.png"), "--model", str(model_dir)], 2, "nope.png"),
        ([str(a), str(tmp_path), "--model", str(model_dir)], 2, "folder"),
        ([str(a), str(a), "--model", str(no_config)], 2, "config.json"),
        ([str(a), str(write_garbage(tmp_path / "bad.jpg")), "--model", str(model_dir)], 1, "bad.jpg"),
    ]
    for argv, status, message in cases:
        assert compare_main([*argv, "--no-progress"]) == status
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, err
    with pytest.raises(SystemExit) as exit_info:
        compare_main([str(a), str(a), "--model", str(model_dir), "--gamma", "-1"])
    assert exit_info.value.code == 2


def test_rank_command(tmp_path, model_dir, capsys):
    folder = tmp_path / "photos"
    paths = colourful_folder(folder)
    write_garbage(folder / "zz_broken.jpg")
    out_dir = tmp_path / "ranking"
    argv = [
        str(folder),
        "--model",
        str(model_dir),
        "--output-dir",
        str(out_dir),
        "--top",
        "4",
        "--bottom",
        "4",
    ]
    assert rank_main([*argv, "--no-progress"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in (out_dir / "ranking.jsonl").read_text().splitlines()]
    assert len(rows) == 13
    assert [r["rank"] for r in rows] == [*range(1, 13), None]
    assert rows[-1]["image"].endswith("zz_broken.jpg") and rows[-1]["error"]
    scores = [r["score"] for r in rows[:-1]]
    assert scores == sorted(scores, reverse=True)
    assert set(rows[0]) == {"rank", "image", "score", "std", "scale", "p_above_next", "error"}
    assert all(0.5 <= r["p_above_next"] <= 1 for r in rows[:11]) and rows[11]["p_above_next"] is None
    assert {r["image"] for r in rows[:-1]} == {str(p) for p in paths}
    with Image.open(out_dir / "contact_sheet.png") as image:
        assert image.size[0] == 1200
    assert (out_dir / "contact_sheet.html").read_text().count("<img") == 8
    table = captured.out.splitlines()
    assert table[0].split()[:2] == ["rank", "score"] and len(table) == 1 + 4 + 1 + 4
    assert table[1].split()[0] == "1" and rows[0]["image"] in table[1]
    assert "skipped" in captured.err and "zz_broken.jpg" in captured.err


def test_rank_command_errors(tmp_path, model_dir, capsys):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no pictures here")
    grey(empty / "sub" / "deep.png", 50)
    no_config = tmp_path / "empty_model"
    no_config.mkdir()
    photos = tmp_path / "photos"
    grey(photos / "one.png", 100)
    out = str(tmp_path / "out")
    cases = [
        ([str(empty), "--model", str(model_dir)], 2, "no images in"),
        ([str(tmp_path / "missing"), "--model", str(model_dir)], 2, "not found"),
        ([str(photos / "one.png"), "--model", str(model_dir)], 2, "not a folder"),
        ([str(photos), "--model", str(no_config)], 2, "config.json"),
        ([str(photos), "--model", str(tmp_path / "no_model")], 2, "not found"),
    ]
    for argv, status, message in cases:
        assert rank_main([*argv, "--output-dir", out, "--no-progress"]) == status
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, err
    # Only unscorable images: nothing to rank.
    black = tmp_path / "black"
    grey(black / "night.png", 0)
    assert rank_main([str(black), "--model", str(model_dir), "--output-dir", out, "--no-progress"]) == 1
    assert "could be scored" in capsys.readouterr().err
    # --recursive finds the image in the sub-folder.
    assert (
        rank_main(
            [str(empty), "--model", str(model_dir), "--output-dir", out, "--recursive", "--no-progress"]
        )
        == 0
    )
