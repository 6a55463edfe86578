"""Evaluation: scripted completions through the metric path, the resumable cache, tables, plots,
--compare; and `python -m aesr1.eval` on the tiny random model (one run, one kill + resume)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import build_aadb, build_para, write_garbage, write_image
from scipy import stats

from aesr1.data import ScoredImage, load_dataset
from aesr1.eval import (
    EvalConfig,
    EvalResult,
    PredictionCache,
    compare_results,
    fit_logistic,
    logistic4,
    run_evaluation,
    table1,
)
from aesr1.eval.cache import CacheMismatchError, Prediction
from aesr1.score.provenance import prompt_sha256

REPO = Path(__file__).resolve().parents[1]


def answer(score: float) -> str:
    return f"<think>The light is soft.</think><answer>{score:.2f}</answer>"


class Scripted:
    """Predictor answering from a {image path: [completions]} script; counts the images it is asked."""

    def __init__(self, script: dict[str, list[str]], fail_after_calls: int | None = None):
        self.script, self.calls, self.seen = script, 0, []
        self.fail_after_calls = fail_after_calls

    def __call__(self, images, num_samples):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        paths = [image.info["path"] for image in images]
        self.seen.extend(paths)
        return [self.script[path][:num_samples] for path in paths]


def noisy_script(items, seed=0, unparseable_every=5, samples=2):
    """Two completions per image near the ground truth; every 5th image's second one is unparseable."""
    rng = np.random.default_rng(seed)
    script, expected = {}, {}
    for index, item in enumerate(items):
        first, second = np.clip(item.score + rng.normal(0, 0.15, 2), 0, 1).round(2)
        if index % unparseable_every == 0:
            script[item.image] = [answer(first), "I cannot rate this picture."][:samples]
            expected[item.id] = first
        else:
            script[item.image] = [answer(first), answer(second)][:samples]
            expected[item.id] = (first + second) / 2 if samples == 2 else first
    return script, expected


@pytest.fixture
def trees(tmp_path):
    build_aadb(tmp_path / "AADB", counts=(2, 2, 12))
    build_para(tmp_path / "PARA", n_train=2, n_test=10)
    return {
        "aadb": load_dataset("aadb", tmp_path / "AADB", "test"),
        "para": load_dataset("para", tmp_path / "PARA", "test"),
    }


def test_metric_path_with_scripted_completions(tmp_path, trees):
    script, expected = {}, {}
    for offset, items in enumerate(trees.values()):
        part_script, part_expected = noisy_script(items, seed=offset)
        script.update(part_script)
        expected.update(part_expected)
    config = EvalConfig(output_dir=str(tmp_path / "out"), num_samples=2, temperature=1.0, name="scripted")
    result = run_evaluation(config, datasets=trees, predictor=Scripted(script), progress=False)

    for label, items in trees.items():
        pred = np.array([expected[item.id] for item in items], dtype=np.float64)
        gt = np.array([item.score for item in items], dtype=np.float64)
        got = result.datasets[label]
        assert got.plcc == pytest.approx(stats.pearsonr(pred, gt)[0], abs=1e-9)
        assert got.srcc == pytest.approx(stats.spearmanr(pred, gt)[0], abs=1e-9)
        assert got.krcc == pytest.approx(stats.kendalltau(pred, gt)[0], abs=1e-9)
        assert (got.images, got.scored, got.unscored) == (len(items), len(items), 0)
        assert got.completions == 2 * len(items) and got.parse_failures == math.ceil(len(items) / 5)
    average = result.average
    assert average["plcc"] == pytest.approx(np.mean([r.plcc for r in result.datasets.values()]))

    out = tmp_path / "out"
    saved = json.loads((out / "results.json").read_text())
    assert saved["datasets"]["para"]["parse_failures"] == 2 and saved["model"] == "scripted"
    assert EvalResult.load_json(out / "results.json").datasets["aadb"].srcc == pytest.approx(
        result.datasets["aadb"].srcc
    )
    markdown = (out / "results.md").read_text()
    assert (
        "| Model | PARA PLCC | PARA SRCC | AADB PLCC | AADB SRCC | Average PLCC | Average SRCC |" in markdown
    )
    assert f"{result.datasets['para'].plcc:.4f}" in markdown and "2/20" in markdown
    for label in ("aadb", "para"):
        for kind in ("distribution", "scatter"):
            png = out / "plots" / f"{label}_{kind}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cached = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert "meta" in cached[0] and len(cached) == 1 + 22


def test_resume_skips_cached_items_and_matches_uninterrupted_run(tmp_path, trees):
    script = {}
    for items in trees.values():
        script.update(noisy_script(items, samples=1)[0])
    base = dict(num_samples=1, batch_size=3, plots=False)
    full = run_evaluation(
        EvalConfig(output_dir=str(tmp_path / "full"), **base),
        datasets=trees,
        predictor=Scripted(script),
        progress=False,
    )
    interrupted = Scripted(script, fail_after_calls=3)
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(
            EvalConfig(output_dir=str(tmp_path / "resumed"), **base),
            datasets=trees,
            predictor=interrupted,
            progress=False,
        )
    assert len(interrupted.seen) == 9  # three batches of three reached the cache
    resumed = Scripted(script)
    result = run_evaluation(
        EvalConfig(output_dir=str(tmp_path / "resumed"), **base),
        datasets=trees,
        predictor=resumed,
        progress=False,
    )
    assert set(resumed.seen).isdisjoint(interrupted.seen)
    assert len(resumed.seen) == 22 - 9
    for label in trees:
        assert result.datasets[label].plcc == pytest.approx(full.datasets[label].plcc, abs=1e-12)
    again = Scripted(script)
    run_evaluation(
        EvalConfig(output_dir=str(tmp_path / "resumed"), **base),
        datasets=trees,
        predictor=again,
        progress=False,
    )
    assert again.seen == []


def test_cache_drops_torn_line_and_rejects_other_settings(tmp_path):
    path = tmp_path / "predictions.jsonl"
    meta = EvalConfig(name="m").generation_fingerprint()
    cache = PredictionCache(path, meta)
    cache.add([Prediction.from_scores("ava", "1", "/1.jpg", 0.5, [answer(0.4)], [0.4])])
    with open(path, "a") as handle:
        handle.write('{"dataset": "ava", "id": "2", "ima')  # killed mid-write
    reopened = PredictionCache(path, meta)
    assert ("ava", "1") in reopened and ("ava", "2") not in reopened
    reopened.add([Prediction.from_scores("ava", "2", "/2.jpg", 0.1, ["x"], [math.nan])])
    assert PredictionCache(path, meta).get(("ava", "2")).pred is None
    other = EvalConfig(name="m", temperature=0.7).generation_fingerprint()
    with pytest.raises(CacheMismatchError, match="temperature"):
        PredictionCache(path, other)
    assert len(PredictionCache(path, other, overwrite=True)) == 0


def test_unreadable_image_during_eval_is_skipped_and_counted(tmp_path):
    items = [ScoredImage(str(write_image(tmp_path / f"{i}.png", i)), i / 10, "csv", str(i)) for i in range(5)]
    items.append(ScoredImage(str(write_garbage(tmp_path / "bad.png")), 0.5, "csv", "bad"))
    script = {item.image: [answer(item.score)] for item in items}
    result = run_evaluation(
        EvalConfig(output_dir=str(tmp_path / "out"), plots=False),
        datasets={"mine": items},
        predictor=Scripted(script),
        progress=False,
    )
    mine = result.datasets["mine"]
    assert (mine.scored, mine.unreadable_at_eval) == (5, 1) and mine.srcc == pytest.approx(1.0)
    skipped = json.loads((tmp_path / "out" / "skipped.json").read_text())
    assert skipped["mine"]["eval"][0][0] == items[-1].image


def test_unparseable_model_still_gives_a_table_with_nan(tmp_path, trees):
    script = {item.image: ["no tags at all"] for items in trees.values() for item in items}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_evaluation(
            EvalConfig(output_dir=str(tmp_path / "out")),
            datasets=trees,
            predictor=Scripted(script),
            progress=False,
        )
    assert any("metrics are NaN" in str(w.message) for w in caught)
    para = result.datasets["para"]
    assert math.isnan(para.plcc) and para.unscored == 10 and para.parse_failures == 10
    text = table1([result])
    assert "NaN" in text
    assert json.loads((tmp_path / "out" / "results.json").read_text())["datasets"]["para"]["plcc"] is None
    assert (tmp_path / "out" / "plots" / "para_distribution.png").exists()


def test_constant_predictions_give_nan_with_a_note(tmp_path, trees):
    script = {item.image: [answer(0.5)] for items in trees.values() for item in items}
    with pytest.warns(RuntimeWarning):
        result = run_evaluation(
            EvalConfig(output_dir=str(tmp_path / "out"), plots=False),
            datasets=trees,
            predictor=Scripted(script),
            progress=False,
        )
    aadb = result.datasets["aadb"]
    assert aadb.scored == 12 and math.isnan(aadb.plcc) and math.isnan(aadb.srcc)
    assert "all predictions are equal" in aadb.note and math.isnan(result.average["srcc"])


def test_logistic_fit_recovers_a_monotonic_map_and_is_flagged(tmp_path):
    rng = np.random.default_rng(0)
    pred = rng.uniform(0, 1, 200)
    truth = [0.9, 0.1, 0.5, 0.08]
    gt = logistic4(pred, *truth) + rng.normal(0, 0.005, 200)
    params = fit_logistic(pred, gt)
    assert np.allclose(logistic4(pred, *params), logistic4(pred, *truth), atol=0.01)
    assert fit_logistic(np.full(10, 0.3), gt[:10]) is None
    paths = {}
    for index, (p, g) in enumerate(zip(pred, np.clip(gt, 0, 1), strict=True)):
        paths[str(write_image(tmp_path / "img" / f"{index}.png", index))] = (p, g)
    items = [ScoredImage(path, g, "csv", str(i)) for i, (path, (p, g)) in enumerate(paths.items())]
    script = {path: [answer(p)] for path, (p, _) in paths.items()}
    config = EvalConfig(output_dir=str(tmp_path / "out"), logistic=True, plots=False, name="fit")
    result = run_evaluation(config, datasets={"mine": items}, predictor=Scripted(script), progress=False)
    mine = result.datasets["mine"]
    assert mine.plcc_logistic > mine.plcc and mine.plcc_logistic > 0.99
    text = table1([result])
    assert f"{mine.plcc_logistic:.4f}†" in text and "logistic fit" in text


def test_compare_puts_results_side_by_side(tmp_path, trees):
    script = {}
    for items in trees.values():
        script.update(noisy_script(items, samples=1)[0])
    run_evaluation(
        EvalConfig(output_dir=str(tmp_path / "a"), plots=False, name="model-a"),
        datasets=trees,
        predictor=Scripted(script),
        progress=False,
    )
    run_evaluation(
        EvalConfig(output_dir=str(tmp_path / "b"), plots=False, name="model-b"),
        datasets={"aadb": trees["aadb"]},
        predictor=Scripted(script),
        progress=False,
    )
    text = compare_results([tmp_path / "a" / "results.json", tmp_path / "b"])
    lines = text.splitlines()
    assert lines[0].startswith("| Model | PARA PLCC") and lines[2].startswith("| model-a |")
    assert lines[3].startswith("| model-b | — | — |") and lines[3].endswith("| — | — |")
    with pytest.raises(ValueError, match="not an aesr1 evaluation result"):
        (tmp_path / "x.json").write_text("{}")
        compare_results([tmp_path / "x.json"])


def test_config_validation():
    with pytest.raises(ValueError, match="num_samples must be 1"):
        EvalConfig(mode="greedy", num_samples=4)
    with pytest.raises(ValueError, match="mode must be one of"):
        EvalConfig(mode="average")
    with pytest.raises(ValueError, match="unknown preset"):
        EvalConfig(preset="q-align-v9")
    sample = EvalConfig(num_samples=4)  # sampling settings alone mean sample mode, at the preset's T
    assert (sample.mode, sample.num_samples, sample.temperature) == ("sample", 4, 1.0)
    assert EvalConfig(mode="expected").generation_fingerprint()["mode"] == "expected"
    with pytest.raises(ValueError, match="batch_size"):
        EvalConfig(batch_size=0)
    with pytest.raises(ValueError, match="split"):
        EvalConfig(split="dev")
    with pytest.raises(ValueError, match="model"):
        run_evaluation(EvalConfig(), datasets={"x": []})


def test_cli_errors_name_what_to_fix(tmp_path, capsys, trees):
    from aesr1.eval.__main__ import main

    assert main(["--model", str(tmp_path), "--root", str(tmp_path), "--datasets", "aadb"]) == 2
    assert "config.json" in capsys.readouterr().err
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert main(["--model", str(tmp_path / "model"), "--root", str(tmp_path), "--datasets", "ava"]) == 2
    assert "AVA" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "model"), "--data", "ava:/x", "--root", str(tmp_path)]) == 2
    assert "either --data or --datasets/--root" in capsys.readouterr().err
    assert main(["--compare", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err


# -------------------------------------------------------------------------- CLI on the tiny model


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from aesr1.modeling.tiny import build_tiny_model

    path = tmp_path_factory.mktemp("tiny-model")
    model, processor = build_tiny_model(seed=0)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "aesr1.eval", *args]


def env() -> dict:
    return {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_cli_on_tiny_model_produces_table_json_and_plots(tmp_path, tiny_model_dir):
    build_aadb(tmp_path / "data" / "AADB", counts=(1, 1, 3))
    build_para(tmp_path / "data" / "PARA", n_train=1, n_test=3)
    out = tmp_path / "out"
    run = subprocess.run(
        cli("--model", str(tiny_model_dir), "--datasets", "aadb,para", "--root", str(tmp_path / "data"),
            "--output-dir", str(out), "--max-new-tokens", "12", "--batch-size", "3", "--no-progress"),
        capture_output=True, text=True, timeout=300, env=env(), cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "| Model | PARA PLCC | PARA SRCC | AADB PLCC | AADB SRCC |" in run.stdout
    saved = json.loads((out / "results.json").read_text())
    for label in ("aadb", "para"):
        dataset = saved["datasets"][label]
        assert dataset["images"] == 3 and dataset["completions"] == 3
        assert dataset["parse_failures"] + dataset["scored"] == 3
        assert (out / "plots" / f"{label}_distribution.png").exists()
        assert (out / "plots" / f"{label}_scatter.png").exists()
    assert (out / "results.md").read_text().startswith("# Evaluation of ")


def test_cli_killed_midway_resumes_without_recomputing(tmp_path, tiny_model_dir):
    images = tmp_path / "pics"
    lines = ["image,score"] + [f"{write_image(images / f'{i}.png', i, 32).name},{i / 10}" for i in range(8)]
    (images / "scores.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    args = cli("--model", str(tiny_model_dir), "--data", f"csv:{images / 'scores.csv'}?range=0..1&split=all",
               "--output-dir", str(out), "--max-new-tokens", "24", "--batch-size", "1", "--no-plots",
               "--no-progress")  # fmt: skip
    cache = out / "predictions.jsonl"
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(), cwd=tmp_path)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if cache.exists() and len(cache.read_text().splitlines()) >= 3:  # meta + 2 predictions
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait(timeout=60)
    process.stdout.close()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL, "the evaluation finished before it could be killed"
    text = cache.read_text()
    before = text[: text.rfind("\n") + 1].splitlines()  # a line torn by the kill is not a prediction
    assert 3 <= len(before) < 9
    done = [json.loads(line)["id"] for line in before[1:]]

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env(), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert f"8 images, {len(done)} cached, {8 - len(done)} to predict" in rerun.stderr
    after = cache.read_text().splitlines()
    assert after[: len(before)] == before  # cached predictions untouched
    ids = [json.loads(line)["id"] for line in after[1:]]
    assert len(ids) == 8 and sorted(ids) == sorted(set(ids))
    assert json.loads((out / "results.json").read_text())["datasets"]["csv"]["completions"] == 8


def test_preset_answers_are_parsed_on_their_scale_and_failures_counted(tmp_path, trees):
    """visualquality-r1 answers on 1-5; evaluation maps them to [0, 1] and never invents a score for
    an answer it cannot read (the released code draws a random one)."""
    from aesr1.score.presets import get_preset

    items = trees["para"]
    script = {}
    for index, item in enumerate(items):
        answer = f"<think>ok</think><answer>{1 + 4 * item.score:.2f}</answer>"
        script[item.image] = ["no number here" if index == 0 else answer]
    config = EvalConfig(output_dir=str(tmp_path / "out"), preset="visualquality-r1", plots=False, name="vq")
    result = run_evaluation(config, datasets={"para": items}, predictor=Scripted(script), progress=False)
    got = result.datasets["para"]
    assert (got.scored, got.unscored, got.parse_failures) == (len(items) - 1, 1, 1)
    cached = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    preset = get_preset("visualquality-r1")
    assert cached[0]["meta"]["preset"] == "visualquality-r1"
    assert cached[0]["meta"]["prompt_sha256"] == prompt_sha256(preset.prompt)
    by_id = {row["id"]: row for row in cached[1:]}
    for item in items[1:]:  # pred on [0, 1] again, up to the 2-decimal rounding of the 1-5 answer
        assert by_id[item.id]["pred"] == pytest.approx(item.score, abs=0.5 / 400 + 1e-12)
    assert by_id[items[0].id]["pred"] is None


@pytest.mark.filterwarnings("ignore:An input is constant")
def test_preset_evaluation_runs_on_a_fixture_tree_with_a_tiny_model(tmp_path, tiny_model_dir, capsys):
    from aesr1.eval.__main__ import main

    build_aadb(tmp_path / "data" / "AADB", counts=(1, 1, 3))
    out = tmp_path / "out"
    code = main(["--model", str(tiny_model_dir), "--datasets", "aadb", "--root", str(tmp_path / "data"),
                 "--preset", "visualquality-r1", "--mode", "greedy", "--output-dir", str(out),
                 "--max-new-tokens", "8", "--no-plots", "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "| Model | AADB PLCC | AADB SRCC |" in capsys.readouterr().out
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["preset"] == "visualquality-r1" and saved["config"]["mode"] == "greedy"
    dataset = saved["datasets"]["aadb"]
    assert dataset["completions"] == 3 and dataset["parse_failures"] + dataset["scored"] == 3
    assert main(["--model", str(tiny_model_dir), "--datasets", "aadb", "--root", str(tmp_path / "data"),
                 "--preset", "q-align"]) == 2  # fmt: skip
    assert "q-align" in capsys.readouterr().err
