"""Score modes (greedy, sample, expected): settings, statistics, scales, and determinism — an image's
result does not depend on the batch size, on the other images in its batch, on their order or on
padding (greedy, expected), or on anything but the seed and the image (sample)."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from aesr1.score import Scale, Scorer
from aesr1.score.modes import ModeSettings, image_key, sample_stats

ANSWER = "<think>fine</think><answer>{:.2f}</answer>"


def test_mode_settings_defaults_and_conflicts():
    from aesr1.train.config import RAPOConfig

    greedy = ModeSettings.resolve()
    assert (greedy.mode, greedy.num_samples, greedy.temperature) == ("greedy", 1, 0.0)
    sample = ModeSettings.resolve("sample")
    rapo = RAPOConfig()
    assert (sample.num_samples, sample.temperature, sample.top_p) == (
        rapo.num_generations,
        rapo.temperature,
        rapo.top_p,
    )
    assert ModeSettings.resolve(temperature=0.7).mode == "sample"
    assert ModeSettings.resolve(num_samples=3).mode == "sample"
    assert ModeSettings.resolve("expected").num_samples == 1
    with pytest.raises(ValueError, match="mode must be one of greedy, sample, expected"):
        ModeSettings.resolve("mean")
    with pytest.raises(ValueError, match="num_samples must be 1"):
        ModeSettings.resolve("expected", num_samples=4)
    with pytest.raises(ValueError, match="temperature must be 0"):
        ModeSettings.resolve("greedy", temperature=0.5)
    with pytest.raises(ValueError, match="needs temperature > 0"):
        ModeSettings.resolve("sample", temperature=0)
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        ModeSettings.resolve("sample", num_samples=0)


@given(st.lists(st.one_of(st.none(), st.floats(0, 1)), max_size=12))
def test_sample_stats_match_float64_reference(values):
    mean, std, median = sample_stats(values)
    parsed = [v for v in values if v is not None]
    if not parsed:
        assert (mean, std, median) == (None, None, None)
        return
    total = 0.0
    for v in parsed:  # left to right, as evaluation caches sum
        total += v
    assert mean == total / len(parsed)
    assert std == pytest.approx(
        math.sqrt(sum((v - sum(parsed) / len(parsed)) ** 2 for v in parsed) / len(parsed)), abs=1e-12
    )
    assert median == float(np.median(parsed))


def test_image_key_depends_on_pixels_only():
    a = Image.new("RGB", (8, 8), (1, 2, 3))
    assert image_key(a) == image_key(a.copy()) == image_key(Image.new("RGB", (8, 8), (1, 2, 3)))
    assert image_key(a) != image_key(Image.new("RGB", (8, 8), (1, 2, 4)))
    assert image_key(a) != image_key(Image.new("RGB", (4, 16), (1, 2, 3)))


class KeyedSampler:
    """A stand-in model whose samples depend only on the seed key it is given, like a seeded sampler."""

    def __init__(self):
        self.key, self.calls = "", []

    def __call__(self, images, num_samples):
        self.calls.append((self.key, len(images)))
        rng = random.Random(self.key)
        return [[ANSWER.format(rng.random()) for _ in range(num_samples)] for _ in images]


def _colours(n, size=16):
    return [Image.new("RGB", (size, size), (20 * i, 255 - 20 * i, 7 * i)) for i in range(n)]


def test_sample_mode_seeds_each_image_by_its_pixels():
    images = _colours(8)
    alone = [Scorer(predictor=KeyedSampler(), mode="sample", num_samples=3)([im])[0] for im in images]
    for batch_size in (2, 5, 8):
        sampler = KeyedSampler()
        order = list(range(8))
        random.Random(batch_size).shuffle(order)
        results = Scorer(predictor=sampler, mode="sample", num_samples=3, batch_size=batch_size)(
            [images[i] for i in order]
        )
        assert all(n == 1 for _, n in sampler.calls)  # one image per sampling call
        for position, index in enumerate(order):
            assert results[position].completions == alone[index].completions
            assert results[position].score == alone[index].score
    assert len({tuple(r.completions) for r in alone}) == 8


def test_scale_maps_scores_and_is_named_everywhere():
    class Fixed:
        def __call__(self, images, num_samples):
            return [["<think>x</think><answer>0.25</answer>", "<think>y</think><answer>0.75</answer>"]] * len(
                images
            )

    image = _colours(1)
    unit = Scorer(predictor=Fixed(), mode="sample", num_samples=2)(image)[0]
    five = Scorer(predictor=Fixed(), mode="sample", num_samples=2, scale="1-5")(image)[0]
    ten = Scorer(predictor=Fixed(), mode="sample", num_samples=2, scale=Scale(1, 10))(image)[0]
    assert (unit.score, unit.std, unit.scores) == (0.5, 0.25, [0.25, 0.75])
    assert (five.score, five.std, five.median, five.scores) == (3.0, 1.0, 3.0, [2.0, 4.0])
    assert ten.score == pytest.approx(5.5) and ten.std == pytest.approx(2.25)
    row = json.loads(json.dumps(five.to_dict()))
    assert row["scale"] == "1-5" and row["mode"] == "sample" and row["samples"] == 2
    for key in ("image", "score", "std", "parse_failures", "critique", "model", "revision", "prompt_sha256"):
        assert key in row
    with pytest.raises(ValueError, match="'5-1'.*low end"):
        Scorer(predictor=Fixed(), scale="5-1")
    with pytest.raises(ValueError, match="not 'lo-hi'"):
        Scorer(predictor=Fixed(), scale="ten")


def test_bad_mode_preset_and_expected_without_model():
    with pytest.raises(ValueError, match="mode must be one of"):
        Scorer(predictor=KeyedSampler(), mode="best")
    with pytest.raises(ValueError, match="unknown-preset"):
        Scorer(predictor=KeyedSampler(), preset="unknown-preset")
    with pytest.raises(ValueError, match="give a model"):
        Scorer(predictor=KeyedSampler(), mode="expected")


# --- on a real (tiny) model --------------------------------------------------------------------------

SIZES = [(56, 56), (84, 56), (56, 112), (112, 112), (56, 84), (70, 70), (112, 56), (98, 56)]


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]


def _same_results_in_any_batching(make_scorer, tolerance, batch_sizes=(2, 5, 8)):
    """Scores the images alone, then shuffled in batches of each size; everything must agree."""
    images = _images()
    alone = [make_scorer(1)([image])[0] for image in images]
    assert all(r.error is None for r in alone)
    for seed, batch_size in enumerate(batch_sizes):
        order = list(range(len(images)))
        random.Random(seed).shuffle(order)
        results = make_scorer(batch_size)([images[i] for i in order])
        for position, index in enumerate(order):
            got, want = results[position], alone[index]
            assert got.completions == want.completions, (batch_size, index)
            if want.score is None:
                assert got.score is None
            else:
                assert abs(got.score - want.score) <= tolerance, (batch_size, index)
            if want.std is not None:
                assert abs(got.std - want.std) <= tolerance
    return alone


@pytest.fixture(scope="module")
def tiny_model():
    from aesr1.modeling.tiny import build_tiny_model

    model, processor = build_tiny_model(seed=0)
    return model.eval(), processor


def test_greedy_is_independent_of_batching_and_padding(tiny_model):
    model, processor = tiny_model
    alone = _same_results_in_any_batching(
        lambda b: Scorer(model, processor, mode="greedy", max_new_tokens=10, batch_size=b), tolerance=0.0
    )
    assert len({r.completions[0] for r in alone}) > 1  # the images really get different answers


def test_sample_mode_on_a_model_depends_only_on_seed_and_image(tiny_model):
    model, processor = tiny_model
    alone = _same_results_in_any_batching(
        lambda b: Scorer(model, processor, mode="sample", num_samples=2, max_new_tokens=8, batch_size=b),
        tolerance=0.0,
        batch_sizes=(5, 8),  # sampling calls are per image whatever the batch size
    )
    reseeded = Scorer(model, processor, mode="sample", num_samples=2, max_new_tokens=8, seed=1)(
        _images()[:1]
    )[0]
    assert reseeded.completions != alone[0].completions


def test_expected_mode_is_independent_of_batching(overfit_model_dir):
    from aesr1.modeling.loading import load_model

    model, processor = load_model(str(overfit_model_dir))
    model.eval()
    alone = _same_results_in_any_batching(
        lambda b: Scorer(model, processor, mode="expected", max_new_tokens=24, batch_size=b),
        tolerance=1e-6,
        batch_sizes=(3, 8),  # the digit tree is read per image; batching only touches the critique
    )
    for result in alone:
        assert result.mode == "expected" and 0 <= result.score <= 1 and result.std >= 0
        assert sum(result.distribution.values()) == pytest.approx(1.0, abs=1e-9)
        assert len(result.completions) == len(result.scores) == 1  # the greedy answer beside it
    assert len({round(r.score, 9) for r in alone}) > 1  # the distribution does depend on the image


def test_cli_names_bad_input_before_loading_a_model(tmp_path, capsys):
    from fixtures_data import write_image

    from aesr1.score.__main__ import main

    (tmp_path / "empty").mkdir()
    image = write_image(tmp_path / "a.png")
    model = str(tmp_path / "no-model-here")  # never loaded: every case fails first
    cases = [
        ([str(tmp_path / "empty")], "no images found in"),
        ([str(image), "--scale", "5-1"], "'5-1': the low end must be below the high end"),
        ([str(image), "--scale", "1..5"], "'1..5' is not 'lo-hi'"),
        ([str(image), "--preset", "aesthetic-9000"], "aesthetic-9000"),
        ([str(image), "--mode", "greedy", "--samples", "3"], "num_samples must be 1"),
        ([str(tmp_path / "missing.jpg")], "missing.jpg"),
    ]
    for args, message in cases:
        assert main([*args, "--model", model, "--no-progress"]) == 2, args
        assert message in capsys.readouterr().err, args
