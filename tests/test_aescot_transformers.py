"""AesCoT's local `transformers` backend on the tiny random Qwen2.5-VL (CPU): expert, judge and CLI."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from aesr1.aescot import LocalModel, TransformersExpert, TransformersJudge, build_dataset  # noqa: E402
from aesr1.aescot.__main__ import main as cli_main  # noqa: E402
from aesr1.aescot.construction import JUDGE_PROMPT  # noqa: E402
from aesr1.aescot.judges import JudgeParseError  # noqa: E402
from aesr1.aescot.store import OutputPaths, read_jsonl  # noqa: E402
from aesr1.data.synthetic import make_synthetic_dataset  # noqa: E402
from aesr1.modeling.tiny import build_tiny_model  # noqa: E402


class RecordingModel(LocalModel):
    """The real tiny model, remembering the prompts it was given."""

    def __init__(self, model, processor):
        super().__init__(model, processor, name="tiny")
        self.prompts = []

    def _generate_sync(self, image, prompt, *args):
        self.prompts.append(prompt)
        return super()._generate_sync(image, prompt, *args)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_model(seed=0)


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn"), n=12, image_size=56)


def test_expert_prompts_with_the_score_and_is_seeded_per_item(tiny, items):
    import asyncio

    local = RecordingModel(*tiny)
    expert = TransformersExpert(local, max_new_tokens=6, seed=3)
    first = asyncio.run(expert.critique(items[0]))
    again = asyncio.run(expert.critique(items[0]))
    assert isinstance(first.text, str) and first.text == again.text
    assert first.finish_reason in ("length", "stop")
    assert f"is {items[0].score:.2f}." in local.prompts[0] and "<image>" in local.prompts[0]
    assert "Mood and Narrative" in local.prompts[0]


def test_judge_on_a_random_model_fails_to_parse(tiny, items):
    import asyncio

    local = RecordingModel(*tiny)
    judge = TransformersJudge(local, max_new_tokens=6)
    with pytest.raises(JudgeParseError):
        asyncio.run(judge.judge(items[1], "Overall, a strong image."))
    assert local.prompts[0].startswith(JUDGE_PROMPT.split("<image>")[0])


def test_build_with_local_expert_and_judge_records_every_item(tiny, items, tmp_path):
    local = LocalModel(*tiny, name="tiny")
    out = tmp_path / "local.jsonl"
    # A random model writes gibberish: every item must end up dropped with a reason, none lost.
    report = build_dataset(
        items[:4],
        TransformersExpert(local, max_new_tokens=5),
        out,
        per_bin=4,
        judge=TransformersJudge(local, max_new_tokens=5),
        min_critique_chars=1,
        english_only=False,
        concurrency=2,
        progress=False,
    )
    rejects = read_jsonl(OutputPaths.for_output(out).rejects)
    kept = read_jsonl(out)
    assert len(kept) + len(rejects) == 4 == report.this_run["processed"]
    assert {r["reason"] for r in rejects} <= {"format", "leakage", "judge_unparseable"}
    assert report.expert == "transformers:tiny"


def test_cli_with_a_saved_checkpoint(tiny, items, tmp_path, capsys):
    model, processor = tiny
    checkpoint = tmp_path / "ckpt"
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    data = tmp_path / "scores.jsonl"
    data.write_text("".join(json.dumps({"image": i.image, "score": i.score}) + "\n" for i in items[:3]))
    out = tmp_path / "cli" / "aescot.jsonl"
    code = cli_main(
        [
            "build",
            "--data",
            str(data),
            "--expert",
            "transformers",
            "--model",
            str(checkpoint),
            "--max-new-tokens",
            "4",
            "--per-bin",
            "3",
            "--output-dir",
            str(out.parent),
            "--no-progress",
        ]
    )
    assert code == 0
    report = json.loads(OutputPaths.for_output(out).report.read_text())
    assert (
        report["expert"] == f"transformers:{checkpoint}" and report["judge"] == f"transformers:{checkpoint}"
    )
    assert report["this_run"]["processed"] == 3
    # Four tokens cannot make a usable critique.
    assert report["dropped"]["format"] == 3
    assert all(
        "truncated" in r["detail"] or "too short" in r["detail"]
        for r in read_jsonl(OutputPaths.for_output(out).rejects)
    )
    assert (
        cli_main(["build", "--data", str(data), "--expert", "transformers", "--output-dir", str(out.parent)])
        == 2
    )
    assert "--expert transformers needs --model" in capsys.readouterr().err
