"""The programmatic score-leakage filter of AesCoT on hand-written sentences and generated cases."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from leakage_cases import CLEAN, LEAKING

from aesr1.aescot.filters import check_leakage
from aesr1.aescot.leakage import LEAK_KINDS, find_leaks, leak_reason
from aesr1.data.records import ScoredImage
from aesr1.data.synthetic import SUBJECTS, write_critique


def test_table_has_at_least_forty_sentences_on_each_side():
    assert len(LEAKING) >= 40 and len(CLEAN) >= 40
    assert {kind for _, kind in LEAKING} == set(LEAK_KINDS)  # every kind is exercised
    assert len({s for s, _ in LEAKING} | set(CLEAN)) == len(LEAKING) + len(CLEAN)


@pytest.mark.parametrize(("sentence", "kind"), LEAKING, ids=[s[:40] for s, _ in LEAKING])
def test_leaking_sentence_is_flagged_with_its_kind(sentence, kind):
    hits = find_leaks(sentence)
    assert kind in {hit.kind for hit in hits}, f"{sentence!r}: {hits}"
    verdict = check_leakage(sentence)
    assert not verdict.passed and kind in verdict.reason


@pytest.mark.parametrize("sentence", CLEAN, ids=[s[:40] for s in CLEAN])
def test_clean_sentence_passes(sentence):
    assert find_leaks(sentence) == []
    assert check_leakage(sentence).passed


def test_leak_inside_a_long_clean_critique_is_found():
    critique = " ".join(CLEAN[:10]) + " All told, a solid seven. " + " ".join(CLEAN[10:20])
    hits = find_leaks(critique)
    assert [h.text.lower() for h in hits] == ["a solid seven"]
    assert critique[hits[0].start : hits[0].end] == "a solid seven"


def test_reason_lists_hits_and_truncates():
    hits = find_leaks("Rated 1, 2, 3, 4, 5 and 6.")
    reason = leak_reason(hits, max_listed=3)
    assert reason.startswith("rating_word 'Rated'; number '1'")
    assert reason.endswith(f"+{len(hits) - 3} more")


def test_non_string_is_rejected():
    with pytest.raises(TypeError, match="text must be a string"):
        find_leaks(0.72)


@settings(max_examples=200, deadline=None)
@given(
    score=st.floats(0.0, 1.0),
    template=st.sampled_from(
        [
            "{:.2f}",
            "{:.1f}",
            "{:.3f}",
            ".{:02d}",
            "{:d}%",
            "{:d}/100",
            "{:d} out of 100",
            "{:d}/10",
        ]
    ),
    prefix=st.sampled_from(["The picture is", "Overall", "I judge it", "A"]),
)
def test_every_written_score_is_flagged(score, template, prefix):
    if template.startswith(".{"):
        text = template.format(round(score * 100) % 100)
    elif "{:d}" in template:
        scale = 10 if template.endswith("/10") else 100
        text = template.format(round(score * scale))
    else:
        text = template.format(score)
    assert {hit.kind for hit in find_leaks(f"{prefix} {text} in my view.")} & {"number", "percentage"}


def test_every_score_in_every_written_form_is_flagged_exhaustively():
    for hundredths in range(101):
        score = hundredths / 100
        forms = [
            f"{score:.2f}",
            f"{score:.1f}",
            f".{hundredths:02d}",
            f"{hundredths}%",
            f"{hundredths}/100",
            f"{hundredths} out of 100",
            f"{round(score * 10)}/10",
            f"{round(score * 10)} of 10",
        ]
        for form in forms:
            assert find_leaks(f"Overall I would say {form} here."), form
            assert find_leaks(f"1. Verdict: {form}"), form


_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(0, 10),
    form=st.sampled_from(
        [
            "{} out of ten",
            "{} out of a hundred",
            "zero point {}",
            "{} tenths",
            "a solid {}.",
            "it deserves a {}.",
            "I'd give it a {} overall.",
            "{} point five",
        ]
    ),
)
def test_spelled_scores_are_flagged(n, form):
    word = _WORDS[n]
    if word == "one" and form in ("a solid {}.", "it deserves a {}.", "I'd give it a {} overall."):
        word = "nine"  # "a solid one" is the pronoun, deliberately not flagged
    text = "The image, " + form.format(word)
    assert find_leaks(text), text


def _synthetic_item(rng: random.Random, index: int) -> ScoredImage:
    attributes = {
        "exposure": rng.uniform(-1, 1),
        "contrast": rng.random(),
        "harmony": rng.random(),
        "palette": rng.choice(["complementary", "analogous", "triadic", "clashing", "muted"]),
        "thirds": rng.random(),
        "sharpness": rng.random(),
        "noise": rng.random(),
        "subject": rng.choice(SUBJECTS),
    }
    return ScoredImage(f"/x/{index}.png", rng.random(), "synthetic", str(index), attributes=attributes)


def test_template_critiques_never_trip_the_filter():
    rng = random.Random(0)
    for index in range(500):
        critique = write_critique(_synthetic_item(rng, index), random.Random(index))
        assert find_leaks(critique) == [], critique
