"""AesCoT build with the template expert and judge (no network): output schema, balance, filters,
resume, judges' verdict parsing and bad input."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from aesr1.aescot import (
    BuildConfig,
    TemplateExpert,
    TemplateJudge,
    build_dataset,
    construction_prompt,
    judge_prompt,
    parse_verdict,
)
from aesr1.aescot.__main__ import main as cli_main
from aesr1.aescot.experts import Critique
from aesr1.aescot.filters import check_format, clean_critique
from aesr1.aescot.judges import JudgeParseError, verdict_band
from aesr1.aescot.store import OutputLock, OutputPaths, ResumeState, read_jsonl, repair_jsonl
from aesr1.data.records import ScoredImage
from aesr1.data.synthetic import make_synthetic_dataset, write_critique
from aesr1.prompts import DIMENSIONS, SCORING_PROMPT, format_completion, score_bin


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), n=240, image_size=16)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


class ScriptedExpert:
    """Template critiques, except for items whose id is in `overrides` (id -> text or exception)."""

    name = "scripted"

    def __init__(self, overrides=None):
        self.overrides = overrides or {}
        self.calls = Counter()

    def validate(self, items):
        return None

    async def critique(self, item):
        self.calls[item.id] += 1
        override = self.overrides.get(item.id)
        if isinstance(override, Exception):
            raise override
        if isinstance(override, Critique):
            return override
        return Critique(override if override is not None else write_critique(item), "stop")

    async def aclose(self):
        return None


def test_template_expert_builds_the_embedded_default(synthetic, tmp_path):
    out = tmp_path / "aescot.jsonl"
    report = build_dataset(
        synthetic, TemplateExpert(), out, per_bin=20, judge=TemplateJudge(), progress=False
    )
    records = _lines(out)
    assert report.complete and report.kept == 60 == len(records)
    assert Counter(r["bin"] for r in records) == {"bad": 20, "fair": 20, "good": 20}
    by_id = {f"{item.source}:{item.id}": item for item in synthetic}
    assert len({r["id"] for r in records}) == len(records)
    for record in records:
        item = by_id[record["id"]]
        assert set(record) == {
            "id",
            "source",
            "image",
            "score",
            "bin",
            "prompt",
            "critique",
            "completion",
            "filters",
        }
        assert record["source"] == "synthetic" and record["prompt"] == SCORING_PROMPT
        assert record["score"] == item.score and record["bin"] == score_bin(item.score)
        assert record["completion"] == format_completion(record["critique"], item.score)
        assert record["completion"].startswith("<think>") and record["completion"].endswith("</answer>")
        assert all(v["passed"] for v in record["filters"].values())
        assert set(record["filters"]) == {"format", "leakage", "consistency", "factual"}
        assert record["image"] == str(item.image) or record["image"].endswith(item.image.lstrip("."))
    saved = json.loads(OutputPaths.for_output(out).report.read_text())
    assert saved["kept"] == 60 and saved["bins"]["fair"]["kept"] == 20 and saved["complete"]


def test_sampling_order_is_seeded(synthetic, tmp_path):
    def kept_ids(seed, name):
        build_dataset(synthetic, TemplateExpert(), tmp_path / name, per_bin=5, seed=seed, progress=False)
        return [r["id"] for r in _lines(tmp_path / name)]

    first, again, other = kept_ids(0, "a.jsonl"), kept_ids(0, "b.jsonl"), kept_ids(1, "c.jsonl")
    assert sorted(first) == sorted(again)
    assert sorted(first) != sorted(other)
    # Independent of how the loader ordered the items.
    reversed_items = list(reversed(synthetic))
    build_dataset(reversed_items, TemplateExpert(), tmp_path / "d.jsonl", per_bin=5, progress=False)
    assert sorted(r["id"] for r in _lines(tmp_path / "d.jsonl")) == sorted(first)


def test_per_bin_mapping_and_shortfall(synthetic, tmp_path):
    counts = Counter(score_bin(i.score) for i in synthetic)
    out = tmp_path / "x.jsonl"
    report = build_dataset(
        synthetic, TemplateExpert(), out, per_bin={"bad": 3, "good": counts["good"] + 5}, progress=False
    )
    kept = Counter(r["bin"] for r in _lines(out))
    assert kept == {"bad": 3, "good": counts["good"]}
    assert not report.complete and report.bins["good"].shortfall == 5 and report.bins["fair"].target == 0
    assert any("'good' ran out of items 5 short" in w for w in report.warnings)
    assert "INCOMPLETE" in report.format_table()


def test_drop_reasons_are_recorded_per_item(synthetic, tmp_path):
    by_bin = {name: [i for i in synthetic if score_bin(i.score) == name] for name in ("bad", "fair", "good")}
    leak, inconsistent, factual, short, truncated, broken = (
        by_bin["bad"][0],
        by_bin["good"][0],
        by_bin["fair"][0],
        by_bin["fair"][1],
        by_bin["good"][1],
        by_bin["bad"][1],
    )
    wrong_subject = next(
        i for i in by_bin["fair"] if i.attributes["subject"] != factual.attributes["subject"]
    )
    overrides = {
        leak.id: write_critique(leak) + " I would rate it 0.21.",
        inconsistent.id: write_critique(inconsistent).rsplit("Overall", 1)[0] + "Overall, a weak image.",
        factual.id: write_critique(wrong_subject),
        short.id: "Overall, a fair picture.",
        truncated.id: Critique(write_critique(truncated), "length"),
        broken.id: OSError("connection reset"),
    }
    expert = ScriptedExpert(overrides)
    out = tmp_path / "reasons.jsonl"
    # Targets = whole bins, so every scripted item is processed.
    targets = {name: len(members) for name, members in by_bin.items()}
    report = build_dataset(synthetic, expert, out, per_bin=targets, judge=TemplateJudge(), progress=False)
    rejects = {r["id"].split(":", 1)[1]: r for r in read_jsonl(OutputPaths.for_output(out).rejects)}
    assert {k: rejects[k]["reason"] for k in overrides} == {
        leak.id: "leakage",
        inconsistent.id: "inconsistent",
        factual.id: "factual_error",
        short.id: "format",
        truncated.id: "format",
        broken.id: "expert_error",
    }
    assert "number '0.21'" in rejects[leak.id]["detail"]
    assert rejects[leak.id]["filters"]["leakage"]["passed"] is False
    assert "'bad'" in rejects[inconsistent.id]["detail"]
    assert "consistency" not in rejects[leak.id]["filters"]  # the judge is not asked about leaking items
    assert "truncated" in rejects[truncated.id]["detail"]
    assert rejects[broken.id]["final"] is False and all(
        rejects[k]["final"] for k in overrides if k != broken.id
    )
    assert report.dropped["leakage"] == 1 and report.dropped["inconsistent"] == 1
    assert report.dropped["factual_error"] == 1 and report.dropped["format"] == 2
    assert report.errors["expert_error"] == 1
    assert report.bins["bad"].dropped == {"leakage": 1} and report.bins["bad"].errors == {"expert_error": 1}
    assert report.kept == len(synthetic) - 6
    kept_ids = {r["id"] for r in _lines(out)}
    assert not kept_ids & set(f"synthetic:{k}" for k in overrides)

    # A rerun retries only the errored item (now healthy) and keeps it.
    expert.overrides.pop(broken.id)
    expert.calls.clear()
    report = build_dataset(synthetic, expert, out, per_bin=targets, judge=TemplateJudge(), progress=False)
    assert dict(expert.calls) == {broken.id: 1}
    assert report.errors["expert_error"] == 0 and report.kept == len(synthetic) - 5
    assert len(_lines(out)) == len({r["id"] for r in _lines(out)}) == len(synthetic) - 5


class FlakyJudge(TemplateJudge):
    """The template judge, failing with a transport error for the ids in `failing`."""

    def __init__(self, failing):
        self.failing = set(failing)

    async def judge(self, item, critique):
        if item.id in self.failing:
            raise ConnectionError("judge endpoint unreachable")
        return self.judge_sync(item, critique)


def test_judge_errors_are_retried_without_asking_the_expert_again(synthetic, tmp_path):
    out = tmp_path / "judge_errors.jsonl"
    failing = [i.id for i in synthetic[:40]]
    expert = ScriptedExpert()
    first = build_dataset(synthetic[:40], expert, out, per_bin=40, judge=FlakyJudge(failing), progress=False)
    assert first.kept == 0 and first.errors["judge_error"] == 40
    rejects = read_jsonl(OutputPaths.for_output(out).rejects)
    assert all(not r["final"] and r["critique"] for r in rejects)
    expert.calls.clear()
    second = build_dataset(synthetic[:40], expert, out, per_bin=40, judge=FlakyJudge([]), progress=False)
    assert second.kept == 40 and second.errors["judge_error"] == 0
    assert not expert.calls  # the recorded critiques were judged again, not rewritten
    assert {r["critique"] for r in _lines(out)} == {r["critique"] for r in rejects}


def test_resume_skips_finished_items_and_repairs_a_partial_line(synthetic, tmp_path):
    out = tmp_path / "resume.jsonl"
    expert = ScriptedExpert()
    first = build_dataset(synthetic, expert, out, per_bin=10, max_attempts=13, progress=False)
    assert first.kept == 13 and sum(expert.calls.values()) == 13
    done_before = [r["id"] for r in _lines(out)]
    # Simulate a kill in the middle of writing the next record.
    with open(out, "a") as handle:
        handle.write('{"id": "synthetic:partial", "sour')
    expert.calls.clear()
    second = build_dataset(synthetic, expert, out, per_bin=10, progress=False)
    records = _lines(out)
    ids = [r["id"] for r in records]
    assert second.complete and len(ids) == len(set(ids)) == 30
    assert ids[:13] == done_before  # nothing lost, nothing rewritten
    assert sum(expert.calls.values()) == 17
    assert not {f"synthetic:{k}" for k in expert.calls} & set(done_before)
    # A third run has nothing left to do.
    expert.calls.clear()
    third = build_dataset(synthetic, expert, out, per_bin=10, progress=False)
    assert third.kept == 30 and not expert.calls and third.this_run["processed"] == 0


def test_interrupted_and_resumed_run_keeps_the_same_items(synthetic, tmp_path):
    # Every third item leaks, so which items end up kept depends on the sampling order.
    overrides = {item.id: write_critique(item) + " A solid seven." for item in synthetic[::3]}
    reference = tmp_path / "reference.jsonl"
    build_dataset(synthetic, ScriptedExpert(overrides), reference, per_bin=12, progress=False)
    out = tmp_path / "interrupted.jsonl"
    for attempts in (7, 11, 5):
        build_dataset(
            synthetic,
            ScriptedExpert(overrides),
            out,
            per_bin=12,
            max_attempts=attempts,
            concurrency=3,
            progress=False,
        )
    report = build_dataset(
        synthetic, ScriptedExpert(overrides), out, per_bin=12, concurrency=3, progress=False
    )
    assert report.complete
    assert sorted(r["id"] for r in _lines(out)) == sorted(r["id"] for r in _lines(reference))
    rejects = read_jsonl(OutputPaths.for_output(out).rejects)
    assert sorted(r["id"] for r in rejects) == sorted(
        r["id"] for r in read_jsonl(OutputPaths.for_output(reference).rejects)
    )


def test_a_second_concurrent_build_on_the_same_output_is_refused(synthetic, tmp_path):
    out = tmp_path / "locked.jsonl"
    with (
        OutputLock(OutputPaths.for_output(out).lock),
        pytest.raises(RuntimeError, match="another AesCoT build"),
    ):
        build_dataset(synthetic, TemplateExpert(), out, per_bin=1, progress=False)
    assert not out.exists()
    assert build_dataset(synthetic, TemplateExpert(), out, per_bin=1, progress=False).kept == 3


def test_overwrite_starts_over(synthetic, tmp_path):
    out = tmp_path / "o.jsonl"
    build_dataset(synthetic, TemplateExpert(), out, per_bin=2, progress=False)
    report = build_dataset(synthetic, TemplateExpert(), out, per_bin=1, overwrite=True, progress=False)
    assert report.kept == 3 and len(_lines(out)) == 3


def test_repair_and_read_jsonl(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "x": ')
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b"]
    assert repair_jsonl(path) == len('{"id": "c", "x": ')
    assert path.read_text() == '{"id": "a"}\n{"id": "b"}\n'
    assert repair_jsonl(path) == 0
    path.write_text("no newline at all")
    repair_jsonl(path)
    assert path.read_text() == ""
    path.write_text('{"id": "a"}\nnot json\n')
    with pytest.raises(ValueError, match=r"f.jsonl': line 2 is not JSON"):
        read_jsonl(path)


def test_resume_state_prefers_kept_then_final(tmp_path):
    paths = OutputPaths.for_output(tmp_path / "s.jsonl")
    paths.out.write_text('{"id": "k"}\n')
    rejects = [
        {"id": "k", "final": True, "reason": "leakage"},
        {"id": "e", "final": False, "reason": "expert_error"},
        {"id": "d", "final": False, "reason": "expert_error"},
        {"id": "d", "final": True, "reason": "format"},
    ]
    paths.rejects.write_text("".join(json.dumps(r) + "\n" for r in rejects))
    state = ResumeState.load(paths)
    assert set(state.kept) == {"k"} and set(state.dropped) == {"d"} and set(state.errors) == {"e"}
    assert state.finished(retry_failed=True) == {"k", "d"}
    assert state.finished(retry_failed=False) == {"k", "d", "e"}


def test_construction_prompt_is_appendix_b_with_table5():
    prompt = construction_prompt(0.715)
    assert "The aesthetic rating of this picture <image> is 0.71." in prompt or "is 0.72." in prompt
    assert prompt.startswith("You are an aesthetic expert.") and prompt.count("<image>") == 1
    for name in DIMENSIONS:
        assert f"- {name}: " in prompt
    assert "Light and Shadow" not in construction_prompt(0.5, with_dimensions=False)
    with pytest.raises(ValueError, match="score"):
        construction_prompt(1.5)
    judge = judge_prompt(0.35, "  A critique.  ")
    assert '"bad" band' in judge and '"""\nA critique.\n"""' in judge and "JSON" in judge


def test_parse_verdict_variants():
    v = parse_verdict(
        'Sure.\n```json\n{"consistent": true, "consistency_reason": "ok", "factually_accurate": true, "factual_errors": []}\n```'
    )
    assert v.consistent and v.factually_accurate and v.consistency_reason == "ok"
    v = parse_verdict(
        '<think>{"consistent": false}</think>{"consistent": "no", "factual_errors": ["no dog in the picture"]}'
    )
    assert not v.consistent and not v.factually_accurate and v.factual_errors == ["no dog in the picture"]
    v = parse_verdict('{"consistent": true, "factually_accurate": true, "factual_errors": ["None"]}')
    assert v.factually_accurate and v.factual_errors == []
    # Listed errors override a claim of accuracy.
    assert not parse_verdict(
        '{"consistent": true, "factually_accurate": true, "factual_errors": ["a red car"]}'
    ).factually_accurate
    for bad in (
        "no json here",
        '{"verdict": true}',
        '{"consistent": "maybe", "factual_errors": []}',
        '{"consistent": true}',
    ):
        with pytest.raises(JudgeParseError):
            parse_verdict(bad)


def test_template_judge_on_template_and_swapped_critiques(synthetic):
    judge = TemplateJudge()
    rng = random.Random(0)
    for item in synthetic:
        verdict = judge.judge_sync(item, write_critique(item, rng))
        assert verdict.consistent and verdict.factually_accurate, (item, verdict)
    # A critique written for an item of another bin is inconsistent; of another subject, factually wrong.
    for item in synthetic[:60]:
        other = next(o for o in synthetic if score_bin(o.score) != score_bin(item.score))
        assert not judge.judge_sync(item, write_critique(other)).consistent
        other = next(o for o in synthetic if o.attributes["subject"] != item.attributes["subject"])
        verdict = judge.judge_sync(item, write_critique(other))
        assert not verdict.factually_accurate and f"subject is a {item.attributes['subject']}" in "; ".join(
            verdict.factual_errors
        )


@pytest.mark.parametrize(
    ("text", "band"),
    [
        ("The light is soft. Overall, a strong image.", "good"),
        ("Overall, an average image.", "fair"),
        ("Colours clash. In the end, a poor picture.", "bad"),
        ("Overall, not a strong image.", None),
        ("The light is soft.", None),
        ("Overall, a strong but flawed image.", None),
        ("Overall, a weak image. Thanks for reading!", "bad"),
    ],
)
def test_verdict_band(text, band):
    assert verdict_band(text) == band


def test_format_filter_and_cleaning():
    good = "Light and shadow model the form well; the palette is calm. Overall, a strong and memorable image."
    assert check_format(good, "stop").passed
    assert clean_critique("<think>the score is 0.8 so praise it</think>\n " + good + " ") == good
    assert not check_format(good, "length").passed
    assert "too short" in check_format("Nice.", "stop").reason
    assert "tags" in check_format(good + " <answer>0.8</answer>", "stop").reason
    assert (
        "English"
        in check_format(
            "Очень красивая фотография с мягким светом и глубокими тенями, тонкая гармония цвета и спокойное настроение.",
            "stop",
        ).reason
    )
    assert "refusal" in check_format("", "refusal").reason
    assert "too long" in check_format(good, "stop", max_chars=50).reason


def test_bad_input_raises_before_work(synthetic, tmp_path):
    out = tmp_path / "bad.jsonl"
    with pytest.raises(ValueError, match="items is empty"):
        build_dataset([], TemplateExpert(), out)
    with pytest.raises(TypeError, match=r"items\[0\] must be a ScoredImage"):
        build_dataset([{"image": "x", "score": 0.5}], TemplateExpert(), out)
    duplicate = [synthetic[0], synthetic[0]]
    with pytest.raises(ValueError, match="twice"):
        build_dataset(duplicate, TemplateExpert(), out)
    with pytest.raises(ValueError, match=r"score must lie in \[0, 1\]"):
        build_dataset([ScoredImage("x.png", 7.0, "ava", "1")], TemplateExpert(), out)
    plain = [ScoredImage(synthetic[0].image, 0.5, "ava", "1")]
    with pytest.raises(ValueError, match="TemplateExpert needs synthetic items"):
        build_dataset(plain, TemplateExpert(), out)
    with pytest.raises(ValueError, match="TemplateJudge needs synthetic items"):
        build_dataset(plain, ScriptedExpert(), out, judge=TemplateJudge())
    with pytest.raises(ValueError, match="unknown bins"):
        build_dataset(synthetic, TemplateExpert(), out, per_bin={"great": 3})
    with pytest.raises(ValueError, match="per_bin"):
        build_dataset(synthetic, TemplateExpert(), out, per_bin=-1)
    with pytest.raises(ValueError, match="concurrency"):
        BuildConfig(concurrency=0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        build_dataset(synthetic, TemplateExpert(), out, per_bins=3)
    with pytest.raises(ValueError, match="must be a .jsonl"):
        build_dataset(synthetic, TemplateExpert(), tmp_path / "out.json")
    with pytest.raises(TypeError, match="expert must provide"):
        build_dataset(synthetic, object(), out)
    assert not out.exists()


def test_missing_image_is_dropped(synthetic, tmp_path):
    gone = ScoredImage(
        str(tmp_path / "gone.png"), 0.9, "synthetic", "gone", attributes=synthetic[0].attributes
    )
    out = tmp_path / "m.jsonl"
    report = build_dataset([gone], ScriptedExpert(), out, per_bin=1, progress=False)
    assert report.dropped["missing_image"] == 1
    assert read_jsonl(OutputPaths.for_output(out).rejects)[0]["reason"] == "missing_image"


def test_cli_template_build_and_check_leakage(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AESR1_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "cli" / "aescot.jsonl"
    code = cli_main(
        [
            "build",
            "--data",
            "synthetic?n=150&image_size=16",
            "--expert",
            "template",
            "--output-dir",
            str(out.parent),
            "--per-bin",
            "4",
            "--good",
            "2",
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "complete" in printed and "report saved" in printed
    assert Counter(r["bin"] for r in _lines(out)) == {"bad": 4, "fair": 4, "good": 2}
    assert json.loads((tmp_path / "cli" / "aescot.report.json").read_text())["judge"] == "template"

    assert cli_main(["check-leakage", "Overall, a fair picture.", "I rate it 0.4."]) == 1
    printed = capsys.readouterr().out
    assert "arg0: clean" in printed and "arg1: LEAK" in printed and "1 of 2 leak" in printed
    assert cli_main(["check-leakage", "--file", str(out)]) == 0

    assert cli_main(["build", "--data", "synthetic", "--expert", "template", "--output-dir", str(out)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert (
        cli_main(["build", "--data", "nosuchset:/x", "--expert", "template", "--output-dir", str(out.parent)])
        == 2
    )
    assert "unknown dataset" in capsys.readouterr().err
