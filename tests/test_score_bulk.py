"""Bulk scoring (`python -m aesr1.score INPUTS --output-dir DIR`): input kinds, sharding, part files,
resume after SIGKILL in a 2-process run, merging, --filter/--keep-top, CLI errors, and one run of
the CLI on the tiny model overfit to one critique.

The multi-process runs start `tests/workers/score_bulk_worker.py` with RANK/WORLD_SIZE/LOCAL_RANK set
as torchrun sets them: a scripted predictor answers from each image's first pixel, and no process
imports torch, so each starts in well under a second.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import OVERFIT_TARGET
from fixtures_data import write_garbage, write_image
from PIL import Image

from aesr1.data.images import ImageError
from aesr1.score import bulk
from aesr1.score.__main__ import build_parser, main
from aesr1.score.inputs import InputError, Launch, collect_inputs, shard_range

WORKER = Path(__file__).parent / "workers" / "score_bulk_worker.py"
sys.path.insert(0, str(WORKER.parent))
import score_bulk_worker  # noqa: E402


def png_bytes(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shard(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def unparseable(images) -> list[bool]:
    """Which of these readable images the scripted worker gives an unparseable answer."""
    return ["<answer>" not in score_bulk_worker.answer(image.convert("RGB")) for image in images]


def test_shard_range_gives_each_index_to_one_process_in_contiguous_blocks():
    for count in range(0, 40):
        for world in range(1, 8):
            blocks = [shard_range(count, rank, world) for rank in range(world)]
            assert [i for block in blocks for i in block] == list(range(count))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    assert shard_range(10, 1, 3) == range(3, 6)
    for rank, world in ((2, 2), (-1, 2), (0, 0), (True, 2)):
        with pytest.raises(ValueError):
            shard_range(10, rank, world)
    assert Launch.from_env({}) == Launch(0, 1, 0)
    assert Launch.from_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == Launch(5, 8, 1)
    assert Launch.from_env({"RANK": "3", "WORLD_SIZE": "4"}) == Launch(3, 4, 3)
    with pytest.raises(ValueError, match="RANK=4, WORLD_SIZE=4"):
        Launch.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        Launch.from_env({"WORLD_SIZE": "two"})


def test_inputs_folders_lists_csv_and_tar_shards(tmp_path):
    for i in range(3):
        write_image(tmp_path / "photos" / f"{i}.png", i)
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    listed = tmp_path / "lists" / "list.txt"
    listed.parent.mkdir()
    listed.write_text("# chosen\n../photos/2.png\n\n/abs/missing.jpg\n")
    (tmp_path / "lists" / "table.csv").write_text("id,path,score\n1,../photos/0.png,3\n")
    write_shard(
        tmp_path / "shard-000.tar",
        {"s/0001.png": png_bytes((10, 20, 30)), "s/0001.json": b"{}", "s/0002.jpg": b"garbage"},
    )
    entries = collect_inputs(
        [tmp_path / "photos", listed, tmp_path / "lists" / "table.csv", tmp_path / "shard-000.tar"]
    )
    names = [e.name for e in entries]
    shard = str(tmp_path / "shard-000.tar")
    assert names == [str(tmp_path / "photos" / f"{i}.png") for i in range(3)] + [
        str(tmp_path / "lists" / "../photos/2.png"), "/abs/missing.jpg",
        str(tmp_path / "lists" / "../photos/0.png"), f"{shard}:s/0001.png", f"{shard}:s/0002.jpg",
    ]  # fmt: skip
    assert entries[0].load() == names[0]  # a plain file is opened by the scorer
    member = entries[-2].load()
    assert member.getpixel((0, 0)) == (10, 20, 30) and member.info["path"] == f"{shard}:s/0001.png"
    with pytest.raises(ImageError, match="s/0002.jpg"):
        entries[-1].load()

    (tmp_path / "lists" / "bad.csv").write_text("id,score\n1,3\n")
    with pytest.raises(InputError, match="no image column.*id, score.*--image-column"):
        collect_inputs([tmp_path / "lists" / "bad.csv"])
    assert len(collect_inputs([tmp_path / "lists" / "bad.csv"], image_column="id")) == 1
    with pytest.raises(FileNotFoundError, match="nowhere"):
        collect_inputs([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(InputError, match="no images found"):
        collect_inputs([tmp_path / "empty", tmp_path / "empty.txt"])
    (tmp_path / "fake.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(InputError, match="not a readable uncompressed tar"):
        collect_inputs([tmp_path / "fake.tar"])


def test_filters_and_keep_top():
    assert bulk.parse_filter("score>=0.6") == bulk.Filter("score", ">=", 0.6)
    assert bulk.parse_filter(" std < 1e-1 ") == bulk.Filter("std", "<", 0.1)
    for text in ("score=>0.6", "score==1", "quality>1", "score>", "score>nan", "score>=0.6 and std<1"):
        with pytest.raises(Exception, match="FIELD OP NUMBER"):
            bulk.parse_filter(text)
    assert bulk.parse_fraction("1") == 1.0
    for text in ("0", "1.5", "-0.1", "nan", "ten"):
        with pytest.raises(Exception, match=r"fraction in \(0, 1\]"):
            bulk.parse_fraction(text)
    nan = np.nan
    merged = bulk.Merged(
        score=np.array([0.9, nan, 0.5, 0.7, 0.7, 0.2]),
        std=np.array([0.1, nan, 0.3, 0.05, 0.2, nan]),
        median=np.full(6, nan),
    )
    assert bulk.kept_indices(merged, [bulk.parse_filter("score>=0.5")], None).tolist() == [0, 2, 3, 4]
    assert bulk.kept_indices(
        merged, [bulk.parse_filter("score>0.5"), bulk.parse_filter("std<=0.1")], None
    ).tolist() == [0, 3]
    # 0.4 of 5 scored images: 2, the earlier of the tied 0.7s
    assert bulk.kept_indices(merged, [], 0.4).tolist() == [0, 3]
    assert bulk.kept_indices(merged, [bulk.parse_filter("score<0.8")], 0.5).tolist() == [3, 4]
    assert bulk.kept_indices(merged, [], 1.0).tolist() == [0, 2, 3, 4, 5]


def parse(*argv: str):
    return build_parser().parse_args([str(a) for a in argv])


def test_bulk_run_in_process_resumes_refuses_other_settings_and_remerges(tmp_path, capsys, monkeypatch):
    for i in range(7):
        write_image(tmp_path / "photos" / f"{i}.png", i)
    write_garbage(tmp_path / "photos" / "3.png")
    write_shard(tmp_path / "s.tar", {"k/a.png": png_bytes((1, 2, 3)), "k/b.png": png_bytes((20, 2, 3))})
    out = tmp_path / "out" / "scores.jsonl"
    calls = []

    def make_scorer(args, launch):
        calls.append(launch)
        return score_bulk_worker.make_scorer(args, launch)

    argv = (tmp_path / "photos", tmp_path / "s.tar", "--model", tmp_path, "--output-dir", out.parent, "--batch-size", "3",
            "--scale", "1-10", "--no-progress", "--filter", "score>=3")  # fmt: skip
    assert bulk.run(parse(*argv), make_scorer, Launch()) == 0
    rows = rows_of(out)
    names = [str(tmp_path / "photos" / f"{i}.png") for i in range(7)] + [
        f"{tmp_path / 's.tar'}:k/{k}.png" for k in "ab"
    ]
    assert [r["image"] for r in rows] == names and [r["index"] for r in rows] == list(range(9))
    assert rows[3]["error"] and rows[8]["score"] is None and rows[8]["note"] == "the answer did not parse"
    assert rows[7]["score"] == pytest.approx(1 + 9 * 0.06) and rows[7]["scale"] == "1-10"
    failed = sum(unparseable(Image.open(names[i]) for i in (0, 1, 2, 4, 5, 6))) + 1
    err = capsys.readouterr().err
    assert (
        f"9 images: {8 - failed} scored, 1 skipped (bad image), {failed} of 8 completions unparseable" in err
    )
    assert f"skipped {names[3]}: " in err and f"no score for {names[8]}: the answer did not parse" in err
    kept = [names[i] for i, r in enumerate(rows) if r["score"] is not None and r["score"] >= 3]
    assert 0 < len(kept) < 7
    assert (tmp_path / "out" / "kept.txt").read_text().splitlines() == kept

    # a torn last line and a lost batch: only those rows are scored again
    part = tmp_path / "out" / "scores.jsonl.part-0-of-1"
    lines = part.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:-3]) + lines[-3][:20])
    expected = out.read_bytes()
    out.unlink()
    monkeypatch.setenv("SCORE_BULK_LOG", str(tmp_path / "log"))
    assert bulk.run(parse(*argv), make_scorer, Launch()) == 0
    monkeypatch.delenv("SCORE_BULK_LOG")
    assert out.read_bytes() == expected
    assert (tmp_path / "log.0").read_text().splitlines() == names[6:]  # index 6 sat in the torn line
    assert len(calls) == 2

    # everything done: no scorer, the same output and list again
    assert bulk.run(parse(*argv, "--keep-top", "0.5"), make_scorer, Launch()) == 0
    assert len(calls) == 2 and out.read_bytes() == expected
    top = (tmp_path / "out" / "kept.txt").read_text().splitlines()
    assert len(top) == -(-len(kept) // 2) and set(top) <= set(kept)
    capsys.readouterr()

    # other settings or another input list: refused, naming what changed
    assert (
        bulk.run(parse(*argv[:-7], "--output-dir", out.parent, "--scale", "1-5"), make_scorer, Launch()) == 2
    )
    assert "other settings (scale:" in capsys.readouterr().err
    write_image(tmp_path / "photos" / "7.png", 7)
    assert bulk.run(parse(*argv), make_scorer, Launch()) == 2
    err = capsys.readouterr().err
    assert "inputs, inputs_sha256" in err and "delete scores.jsonl.part-*" in err
    assert len(calls) == 2


def test_each_process_takes_the_gpu_of_its_local_rank(monkeypatch):
    import torch

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert bulk.process_device("auto", Launch(3, 4, 1)) == "cuda:1" and chosen == [1]
    assert bulk.process_device("cpu", Launch(3, 4, 1)) == "cpu"
    with pytest.raises(ValueError, match="LOCAL_RANK=2, but this machine has 2 CUDA"):
        bulk.process_device("auto", Launch(2, 4, 2))


def test_bulk_cli_errors_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "table.csv").write_text("id,score\n1,3\n")
    write_image(tmp_path / "a.png")
    common = ("--model", str(tmp_path / "no-model"), "--output-dir", str(tmp_path / "o"))
    for argv, message in (
        ([str(tmp_path / "missing")], "missing' not found"),
        ([str(tmp_path / "empty")], "no images found"),
        ([str(tmp_path / "table.csv")], "no image column"),
        ([str(tmp_path / "a.png"), "--jsonl"], "leave out --jsonl"),
    ):
        assert main([*argv, *common]) == 2
        assert message in capsys.readouterr().err
    assert main([str(tmp_path / "a.png"), *common, "--output-dir", str(tmp_path / "a.png")]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err
    for argv, message in (
        (["--filter", "score=0.5", *common], "not FIELD OP NUMBER"),
        (["--keep-top", "1.5", *common], r"not a fraction in (0, 1]"),
        (["--filter", "score>0.5", "--model", "m"], "--filter applies only with --output-dir"),
        (
            ["--keep-top", "0.1", "--image-column", "k", "--model", "m"],
            "--keep-top, --image-column apply only with --output-dir",
        ),
    ):
        with pytest.raises(SystemExit) as exit_:
            main([str(tmp_path / "a.png"), *argv])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o" / "scores.jsonl").exists()


def launch(rank: int, world: int, argv: list, **env: str) -> subprocess.Popen:
    environment = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), **env)
    return subprocess.Popen(
        [sys.executable, str(WORKER), *map(str, argv)], env=environment, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return err


def rows_in(path: Path) -> list[int]:
    """The indices in a part's complete row lines."""
    text = path.read_text() if path.exists() else ""
    lines = text.splitlines(keepends=True)
    return [json.loads(line)["index"] for line in lines[1:] if line.endswith("\n")]


def wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_two_processes_killed_midway_resume_to_the_uninterrupted_output(tmp_path, capsys):
    images = tmp_path / "images"
    for i in range(300):
        write_image(images / f"{i:03d}.png", i)
    for i in (7, 151, 299):
        write_garbage(images / f"{i:03d}.png")
    names = sorted(str(p) for p in images.iterdir())
    common = [images, "--model", tmp_path, "--batch-size", "4", "--no-progress"]

    # the uninterrupted run, in this process: its output must not depend on the number of processes
    reference = tmp_path / "reference" / "scores.jsonl"
    assert (
        bulk.run(parse(*common, "--output-dir", reference.parent), score_bulk_worker.make_scorer, Launch())
        == 0
    )

    out = tmp_path / "run" / "scores.jsonl"
    parts = [tmp_path / "run" / f"scores.jsonl.part-{rank}-of-2" for rank in (0, 1)]
    first = [
        launch(rank, 2, [*common, "--output-dir", out.parent], SCORE_BULK_DELAY="0.04") for rank in (0, 1)
    ]
    wait_until(lambda: len(rows_in(parts[1])) >= 40)
    first[1].send_signal(signal.SIGKILL)
    wait_until(lambda: len(rows_in(parts[0])) >= 80)
    first[0].send_signal(signal.SIGKILL)
    for process in first:
        process.communicate(timeout=60)
        assert process.returncode == -signal.SIGKILL
    assert not out.exists()
    before = [set(rows_in(part)) for part in parts]
    assert 40 <= len(before[1]) < 150 and 80 <= len(before[0]) < 150
    with open(parts[1], "a") as handle:  # a row torn by the kill
        handle.write('{"index": 299, "image": "')

    log = tmp_path / "log"
    resumed = [
        launch(rank, 2, [*common, "--output-dir", out.parent], SCORE_BULK_LOG=str(log)) for rank in (0, 1)
    ]
    errors = [finish(process) for process in resumed]
    assert (
        f"rank 1/2: scored {150 - len(before[1])} images, {len(before[1])} of 150 were already" in errors[1]
    )
    failed = sum(unparseable(Image.open(name) for i, name in enumerate(names) if i not in (7, 151, 299)))
    assert (
        f"300 images: {297 - failed} scored, 3 skipped (bad image), {failed} of 297 completions" in errors[0]
    )

    assert out.read_bytes() == reference.read_bytes()
    rows = rows_of(out)
    assert [r["index"] for r in rows] == list(range(300)) and [r["image"] for r in rows] == names
    after = [rows_in(part) for part in parts]
    assert sorted(after[0] + after[1]) == list(range(300))  # every image scored exactly once
    assert after[0] == list(range(150)) and after[1] == list(range(150, 300))
    for rank in (0, 1):
        computed = {names.index(name) for name in (log.with_name(f"log.{rank}")).read_text().splitlines()}
        block, bad = set(range(150 * rank, 150 * (rank + 1))), {7, 151, 299}
        assert not computed & before[rank]  # nothing in the parts was scored again
        assert computed | before[rank] | (bad & block) == block and not computed & bad

    # one process now: the parts of the 2-process run hold everything, so it only merges
    out.unlink()

    def no_scorer(args, launch):
        raise AssertionError("a finished run loaded a model")

    assert (
        bulk.run(parse(*common, "--output-dir", out.parent, "--filter", "score>0.5"), no_scorer, Launch())
        == 0
    )
    assert out.read_bytes() == reference.read_bytes()
    kept = (tmp_path / "run" / "kept.txt").read_text().splitlines()
    assert kept == [r["image"] for r in rows if r["score"] is not None and r["score"] > 0.5]


def test_bulk_cli_on_tiny_model(tmp_path, overfit_model_dir, capsys, monkeypatch):
    for variable in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(variable, raising=False)
    for i in range(2):
        write_image(tmp_path / "photos" / f"{i}.png", i, 56)
    write_garbage(tmp_path / "photos" / "broken.jpg")
    out = tmp_path / "scores.jsonl"
    argv = [str(tmp_path / "photos"), "--model", str(overfit_model_dir), "--max-new-tokens", "24",
            "--no-progress", "--output-dir", str(tmp_path), "--filter", "score>=0.7"]  # fmt: skip
    assert main(argv) == 0
    rows = rows_of(out)
    assert [os.path.basename(r["image"]) for r in rows] == ["0.png", "1.png", "broken.jpg"]
    for row in rows[:2]:
        assert row["score"] == pytest.approx(0.72) and row["completions"] == [OVERFIT_TARGET]
        assert row["revision"] and row["mode"] == "greedy"
    assert rows[2]["error"] and rows[2]["score"] is None
    assert (tmp_path / "kept.txt").read_text().splitlines() == [r["image"] for r in rows[:2]]
    assert (
        "3 images: 2 scored, 1 skipped (bad image), 0 of 2 completions unparseable" in capsys.readouterr().err
    )
    assert main(argv) == 0  # done: merged again without loading the model
    assert "scored 0 images, 3 of 3 were already in scores.jsonl.part-0-of-1" in capsys.readouterr().err
