"""The built-in synthetic aesthetic dataset (interface 1): determinism, score formula, bins, critiques."""

from __future__ import annotations

import math
import random
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from aesr1.data.records import ScoredImage
from aesr1.data.synthetic import (
    PALETTES,
    SUBJECTS,
    make_synthetic_dataset,
    render_image,
    synthetic_score,
    thirds_of,
    write_critique,
)
from aesr1.prompts import DIMENSIONS, score_bin

KEYS = {"exposure", "contrast", "harmony", "palette", "thirds", "sharpness", "noise", "subject"}


def reference_score(a: dict) -> float:
    """The documented formula, written out independently in float64."""
    s = (
        0.30 * (1.0 - abs(a["exposure"]))
        + 0.20 * a["contrast"]
        + 0.20 * a["harmony"]
        + 0.10 * a["thirds"]
        + 0.10 * a["sharpness"]
        + 0.10 * (1.0 - a["noise"])
    )
    return min(1.0, max(0.0, s))


@pytest.fixture(scope="module")
def items(tmp_path_factory) -> list[ScoredImage]:
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn"), n=300, seed=3, image_size=32)


def test_records_have_exactly_the_interface_attributes(items):
    for item in items:
        assert item.source == "synthetic"
        assert set(item.attributes) == KEYS
        a = item.attributes
        assert -1.0 <= a["exposure"] <= 1.0
        for key in ("contrast", "harmony", "thirds", "sharpness", "noise"):
            assert 0.0 <= a[key] <= 1.0, key
        assert a["palette"] in PALETTES
        assert a["subject"] in SUBJECTS
        with Image.open(item.image) as img:
            assert img.size == (32, 32) and img.mode == "RGB"
    assert len({item.id for item in items}) == len(items)


def test_score_is_the_documented_function(items):
    for item in items:
        assert item.score == pytest.approx(reference_score(item.attributes), abs=5e-5)
        assert 0.0 <= item.score <= 1.0


@settings(max_examples=300, deadline=None)
@given(
    exposure=st.floats(-1, 1),
    contrast=st.floats(0, 1),
    harmony=st.floats(0, 1),
    thirds=st.floats(0, 1),
    sharpness=st.floats(0, 1),
    noise=st.floats(0, 1),
)
def test_score_formula_property(exposure, contrast, harmony, thirds, sharpness, noise):
    a = dict(
        exposure=exposure, contrast=contrast, harmony=harmony, thirds=thirds, sharpness=sharpness, noise=noise
    )
    assert synthetic_score(a) == pytest.approx(reference_score(a), abs=1e-12)
    assert 0.0 <= synthetic_score(a) <= 1.0


def test_all_bins_populated_and_spread(items):
    bins = [score_bin(item.score) for item in items]
    for name in ("bad", "fair", "good"):
        assert bins.count(name) >= 0.15 * len(items), name
    scores = np.array([item.score for item in items])
    assert scores.std() > 0.15


def test_deterministic_across_directories(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", n=20, seed=7, image_size=32)
    b = make_synthetic_dataset(tmp_path / "b", n=20, seed=7, image_size=32)
    c = make_synthetic_dataset(tmp_path / "c", n=20, seed=8, image_size=32)
    assert [(x.id, x.score, x.attributes) for x in a] == [(x.id, x.score, x.attributes) for x in b]
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(np.asarray(Image.open(x.image)), np.asarray(Image.open(y.image)))
    assert [x.score for x in a] != [x.score for x in c]
    # A second identical call reuses the drawn files and returns the same records.
    again = make_synthetic_dataset(tmp_path / "a", n=20, seed=7, image_size=32)
    assert [(x.image, x.score) for x in again] == [(x.image, x.score) for x in a]


def _attrs(**overrides) -> dict:
    base = dict(
        exposure=0.0,
        contrast=0.8,
        harmony=0.9,
        palette="analogous",
        thirds=1.0,
        sharpness=1.0,
        noise=0.0,
        subject="circle",
    )
    base.update(overrides)
    return base


def _pixels(attrs: dict) -> np.ndarray:
    img = render_image(attrs, (1 / 3, 1 / 3), 0.1, 56, seed=0)
    return np.asarray(img, dtype=np.float64) / 255.0


def test_properties_are_visible_in_the_pixels():
    dark, mid, bright = (_pixels(_attrs(exposure=e)).mean() for e in (-0.9, 0.0, 0.9))
    assert dark < mid - 0.2 and bright > mid + 0.2
    assert _pixels(_attrs(contrast=1.0)).std() > 2 * _pixels(_attrs(contrast=0.1)).std()
    sharp, soft = _pixels(_attrs(sharpness=1.0)), _pixels(_attrs(sharpness=0.0))
    assert np.abs(np.diff(sharp, axis=1)).max() > np.abs(np.diff(soft, axis=1)).max() + 0.1
    noisy = _pixels(_attrs(noise=1.0))
    assert np.abs(noisy - sharp).std() > 0.05
    muted = _pixels(_attrs(palette="muted"))
    saturation = lambda p: (p.max(axis=2) - p.min(axis=2)).mean()  # noqa: E731
    assert saturation(muted) < saturation(_pixels(_attrs(palette="clashing"))) - 0.2


def test_thirds_measure():
    assert thirds_of(1 / 3, 2 / 3) == pytest.approx(1.0)
    assert thirds_of(0.5, 0.5) == pytest.approx(0.0, abs=1e-12)
    d = 0.05
    assert thirds_of(2 / 3 + d, 1 / 3) == pytest.approx(1 - d / (math.sqrt(2) / 6))


def test_critique_covers_dimensions_and_never_leaks(items):
    dimension_heads = [name.split()[0].lower() for name in DIMENSIONS]
    endings = {}
    for item in items:
        for text in (write_critique(item), write_critique(item, random.Random(0), vary=True)):
            assert not re.search(r"\d", text), text
            assert "score" not in text.lower() and "rating" not in text.lower()
            lowered = text.lower()
            positions = [lowered.find(head) for head in dimension_heads]
            assert all(p >= 0 for p in positions), text
            assert positions == sorted(positions), "dimensions in Table 5 order"
            assert item.attributes["subject"] in text
            endings.setdefault(score_bin(item.score), set()).add(text.rsplit(".", 2)[-2].strip())
    # The overall judgment is a function of the bin: the bins never share an ending.
    assert endings["bad"].isdisjoint(endings["good"])
    assert endings["bad"].isdisjoint(endings["fair"]) and endings["fair"].isdisjoint(endings["good"])


def test_critique_is_deterministic_and_informative(items):
    assert [write_critique(i) for i in items[:20]] == [write_critique(i) for i in items[:20]]
    # An rng alone changes nothing (AesCoT's template expert passes one); vary=True picks synonyms.
    assert [write_critique(i, random.Random(3)) for i in items[:20]] == [
        write_critique(i) for i in items[:20]
    ]
    a, b = random.Random(5), random.Random(5)
    varied = [write_critique(i, a, vary=True) for i in items[:20]]
    assert varied == [write_critique(i, b, vary=True) for i in items[:20]]
    assert varied != [write_critique(i) for i in items[:20]]
    # The words follow the pixels: exposure direction and palette are named.
    base = ScoredImage(image="x.png", score=0.5, source="synthetic", id="x", attributes=_attrs())
    under = ScoredImage(
        image="x.png", score=0.2, source="synthetic", id="y", attributes=_attrs(exposure=-0.9)
    )
    assert "well exposed" in write_critique(base)
    assert "very dark" in write_critique(under)
    assert "analogous" in write_critique(base)


def test_critique_rejects_non_synthetic_items():
    with pytest.raises(ValueError, match="attributes"):
        write_critique(ScoredImage(image="x.png", score=0.5, source="ava", id="1"))


@pytest.mark.parametrize("kwargs, match", [({"n": 0}, "n must"), ({"image_size": 4}, "image_size")])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic_dataset(tmp_path, **kwargs)
