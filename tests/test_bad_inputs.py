"""Bad images, bad settings and failing writes: one bad image is reported for that image while the
others are scored; every CLI ends a failed run with one `error:` line naming what to fix."""

from __future__ import annotations

import builtins
import errno
import json
import math
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import write_image
from PIL import Image

from aesr1.data import ScoredImage
from aesr1.data.files import check_images
from aesr1.eval import EvalConfig, EvalResult, ModelPredictor, run_evaluation
from aesr1.eval.results import DatasetResult
from aesr1.score import Scorer, summary

# Datasets of a few images with scripted answers: their correlations are NaN (and warned about),
# which is not what these tests are about.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

ANSWER = "<think>Soft light.</think><answer>0.50</answer>"


def write_png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims `width` x `height` 8-bit grey pixels and holds none: PIL's
    decompression-bomb check reads only the header, so this costs nothing to write or open."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    return path


class Recorder:
    """Predictor answering ANSWER; keeps every image it is given."""

    def __init__(self):
        self.images = []

    def __call__(self, images, num_samples):
        self.images.extend(images)
        return [[ANSWER] * num_samples for _ in images]


@pytest.fixture(scope="module")
def tiny():
    """The tiny random model and its real Qwen2-VL image processor."""
    from aesr1.modeling.tiny import build_tiny_model

    model, processor = build_tiny_model(seed=0)
    model.eval()
    return model, processor


@pytest.fixture
def fifo(tmp_path):
    """A FIFO named like an image. Should anything open it for reading, a writer shows up after a few
    seconds with bytes that are no image, so a reader that blocks fails instead of hanging the test."""
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    done = threading.Event()

    def unblock():
        deadline = time.monotonic() + 5
        while not done.is_set():
            try:  # non-blocking: fails with ENXIO while nobody reads
                descriptor = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.05)
                continue
            os.write(descriptor, b"not an image")
            os.close(descriptor)
            return

    thread = threading.Thread(target=unblock, daemon=True)
    thread.start()
    yield path
    done.set()
    thread.join(timeout=10)


# ------------------------------------------------------------------------------ one bad image


def test_scorer_reports_images_the_processor_rejects_and_scores_the_rest(tmp_path, tiny):
    model, processor = tiny
    good = write_image(tmp_path / "good.png", 1, 56)
    strip = tmp_path / "strip.png"
    Image.new("RGB", (402, 2), (10, 20, 30)).save(strip)  # aspect ratio 201
    scorer = Scorer(model, processor, max_new_tokens=4, batch_size=4)
    results = scorer([good, strip, Image.new("RGB", (0, 0))])
    assert [r.image for r in results] == [str(good), str(strip), "<PIL image 2>"]
    assert results[0].error is None and len(results[0].completions) == 1
    assert "aspect ratio" in results[1].error and "402x2" in results[1].error
    assert results[2].error == "empty image (0x0 pixels)"
    assert all(r.score is None and r.completions == [] for r in results[1:])
    assert summary(results)["unreadable"] == 2
    # a single bad image gives its result too, it does not raise
    (alone,) = scorer(Image.new("RGB", (0, 0)))
    assert alone.error and alone.score is None


def test_eval_names_the_image_the_processor_rejects_and_goes_on(tmp_path, tiny):
    model, processor = tiny
    items = [
        ScoredImage(str(write_image(tmp_path / f"{i}.png", i, 56)), i / 4, "csv", str(i)) for i in range(3)
    ]
    strip = tmp_path / "strip.png"
    Image.new("RGB", (2, 500)).save(strip)
    items.insert(1, ScoredImage(str(strip), 0.5, "csv", "strip"))
    config = EvalConfig(output_dir=str(tmp_path / "out"), plots=False, max_new_tokens=4, batch_size=4)
    predictor = ModelPredictor(model, processor, max_new_tokens=4)
    result = run_evaluation(config, datasets={"mine": items}, predictor=predictor, progress=False)
    assert result.datasets["mine"].unreadable_at_eval == 1
    assert result.datasets["mine"].completions == 3
    skipped = json.loads((tmp_path / "out" / "skipped.json").read_text())["mine"]["eval"]
    assert skipped[0][0] == str(strip) and "aspect ratio" in skipped[0][1]


def test_decompression_bomb_is_reported_not_raised(tmp_path):
    bomb = write_png_header(tmp_path / "bomb.png", 20000, 20000)
    good = write_image(tmp_path / "good.png")
    recorder = Recorder()
    results = Scorer(predictor=recorder)([bomb, good])
    assert "decompression bomb" in results[0].error and results[1].score == pytest.approx(0.5)
    assert len(recorder.images) == 1

    items = [ScoredImage(str(bomb), 0.1, "csv", "bomb"), ScoredImage(str(good), 0.9, "csv", "good")]
    result = run_evaluation(
        EvalConfig(output_dir=str(tmp_path / "out"), plots=False),
        datasets={"mine": items},
        predictor=Recorder(),
        progress=False,
    )
    assert (result.datasets["mine"].unreadable_at_eval, result.datasets["mine"].scored) == (1, 1)

    verdicts = check_images([str(bomb), str(good)], "open", progress=False)
    assert "too large" in verdicts[0] and verdicts[1] is None


def test_fifo_is_reported_not_read(tmp_path, fifo):
    good = write_image(tmp_path / "good.png")
    recorder = Recorder()
    results = Scorer(predictor=recorder)([fifo, good])
    assert results[0].error == "not a regular file (a FIFO)" and results[1].error is None
    assert len(recorder.images) == 1
    assert check_images([str(fifo)], "exists", progress=False) == ["unreadable: not a regular file"]

    items = [ScoredImage(str(fifo), 0.1, "csv", "pipe"), ScoredImage(str(good), 0.9, "csv", "good")]
    result = run_evaluation(
        EvalConfig(output_dir=str(tmp_path / "out"), plots=False, check_images="none"),
        datasets={"mine": items},
        predictor=Recorder(),
        progress=False,
    )
    assert result.datasets["mine"].unreadable_at_eval == 1


def test_a_folder_with_a_fifo_scores_its_images(tmp_path, fifo):
    write_image(fifo.parent / "good.png")
    results = Scorer(predictor=Recorder())(fifo.parent)
    assert [Path(r.image).name for r in results] == ["good.png"]


def test_high_bit_depth_greyscale_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # a 16-bit greyscale PNG
    expected = np.rint(ramp / 257.0)
    recorder = Recorder()
    in_memory = [
        Image.fromarray(ramp.astype(np.int32)),  # mode "I": how PIL has read 16-bit files
        Image.fromarray((ramp / 65535.0).astype(np.float32)),  # mode "F" on [0, 1]
        Image.frombytes("I;16B", (64, 64), ramp.astype(">u2").tobytes()),
    ]
    assert [image.mode for image in in_memory] == ["I", "F", "I;16B"]
    results = Scorer(predictor=recorder)([tmp_path / "deep.png", *in_memory])
    assert all(r.error is None for r in results)
    with Image.open(tmp_path / "deep.png") as image:
        assert image.mode.startswith("I")
    for image in recorder.images:
        pixels = np.asarray(image)
        assert image.mode == "RGB" and pixels.dtype == np.uint8
        assert np.abs(pixels[..., 0].astype(float) - expected).max() <= 1
        assert (pixels[..., 0] == pixels[..., 2]).all()


def test_training_images_of_high_bit_depth_are_scaled_not_clipped(tmp_path):
    """The chat inputs of SFT and RAPO load images like the scorer does."""
    from aesr1.modeling.chat import load_images

    ramp = np.linspace(0, 65535, 32 * 32).round().astype(np.uint16).reshape(32, 32)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    expected = np.rint(ramp / 257.0)
    for image in load_images([tmp_path / "deep.png", Image.fromarray(ramp.astype(np.int32))]):
        pixels = np.asarray(image)
        assert image.mode == "RGB" and np.abs(pixels[..., 1].astype(float) - expected).max() <= 1


# ------------------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"top_p": 5.0}, "top_p"),
        ({"top_p": math.nan}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
    ],
)
def test_scorer_rejects_bad_generation_settings(settings, named):
    with pytest.raises(ValueError, match=named):
        Scorer(predictor=Recorder(), **settings)


@pytest.fixture
def model_dir(tmp_path, monkeypatch):
    """A directory that looks like a model; loading it fails the test (checks must come first)."""
    import aesr1.modeling.loading

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(aesr1.modeling.loading, "load_model", load_model)
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path


def test_scorer_checks_device_dtype_and_sampling_before_loading(model_dir, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="top_p"):
        Scorer(model_dir, top_p=5)
    with pytest.raises(ValueError, match="'cuda'.*CUDA is not available"):
        Scorer(model_dir, device="cuda")
    with pytest.raises(ValueError, match="'gpu' is not a device"):
        Scorer(model_dir, device="gpu")
    with pytest.raises(ValueError, match="dtype .*'bogus'"):
        Scorer(model_dir, dtype="bogus")


def write_csv_dataset(folder: Path, n: int = 4) -> str:
    lines = ["image,score"] + [f"{write_image(folder / f'{i}.png', i, 16).name},{i / 10}" for i in range(n)]
    (folder / "scores.csv").write_text("\n".join(lines) + "\n")
    return f"csv:{folder / 'scores.csv'}?range=0..1&split=all"


def test_eval_cli_rejects_dtype_and_device_before_loading(tmp_path, model_dir, monkeypatch, capsys):
    import torch

    from aesr1.eval.__main__ import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = write_csv_dataset(tmp_path / "pics")
    common = [
        "--model",
        str(model_dir),
        "--data",
        data,
        "--output-dir",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    assert main([*common, "--dtype", "bogus"]) == 2
    assert "error: dtype must be one of" in capsys.readouterr().err
    assert main([*common, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "error: device 'cuda': CUDA is not available" in err and "Traceback" not in err


# ------------------------------------------------------------------------------ failing writes


@pytest.fixture
def scripted_model(tmp_path, monkeypatch):
    """`--model` directory whose "model" is a Recorder (no weights are loaded); counts the loads."""
    loads = []

    def from_pretrained(cls, path, **kwargs):
        loads.append(path)
        return Recorder()

    monkeypatch.setattr(ModelPredictor, "from_pretrained", classmethod(from_pretrained))
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path, loads


def eval_args(tmp_path, model: Path, output: Path) -> list[str]:
    data = write_csv_dataset(tmp_path / "pics", n=6)
    return [
        "--model",
        str(model),
        "--data",
        data,
        "--output-dir",
        str(output),
        "--no-progress",
        "--batch-size",
        "2",
    ]


def test_eval_output_under_a_regular_file_fails_before_loading(tmp_path, scripted_model, capsys):
    from aesr1.eval.__main__ import main

    model, loads = scripted_model
    (tmp_path / "file").write_text("a regular file")
    output = tmp_path / "file" / "out"
    assert main(eval_args(tmp_path, model, output)) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {output}: Not a directory"
    assert loads == []


def test_eval_read_only_output_fails_before_loading(tmp_path, scripted_model, capsys, monkeypatch):
    import tempfile

    from aesr1.eval.__main__ import main

    def read_only(*args, **kwargs):  # as root, chmod does not stop writes: simulate the file system
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.path.join(kwargs["dir"], "tmpXYZ"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    model, loads = scripted_model
    output = tmp_path / "out"
    assert main(eval_args(tmp_path, model, output)) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {output}: Read-only file system"
    assert loads == []


def test_eval_full_disk_names_the_file_and_a_rerun_completes(tmp_path, scripted_model, capsys, monkeypatch):
    import matplotlib.figure

    import aesr1.eval.cache
    from aesr1.eval.__main__ import main

    model, _ = scripted_model
    output = tmp_path / "out"
    args = eval_args(tmp_path, model, output)

    appends = []

    def full_after_one_batch(path, mode="r", *rest, **kwargs):
        handle = builtins.open(path, mode, *rest, **kwargs)  # noqa: SIM115 (closed by the caller)
        if mode != "a":
            return handle
        appends.append(path)
        if len(appends) == 1:
            return handle

        class Full:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                handle.close()

            def write(self, text):  # part of the line reaches the disk, then the disk is full
                handle.write(text[: len(text) // 2])
                handle.flush()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return Full()

    monkeypatch.setattr(aesr1.eval.cache, "open", full_after_one_batch, raising=False)
    assert main(args) == 1
    cache_file = output / "predictions.jsonl"
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {cache_file}: No space left on device"
    monkeypatch.undo()
    assert len(cache_file.read_text().splitlines()) == 4  # meta, two predictions, a torn line

    def no_space(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    recorder = Recorder()
    monkeypatch.setattr(ModelPredictor, "from_pretrained", classmethod(lambda cls, path, **kw: recorder))
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", no_space)
    assert main(args) == 1
    plot = output / "plots" / "csv_distribution.png"
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {plot}: No space left on device"
    assert len(recorder.images) == 6 - 2  # the two saved predictions were kept

    monkeypatch.undo()  # space freed
    rerun = Recorder()
    monkeypatch.setattr(ModelPredictor, "from_pretrained", classmethod(lambda cls, path, **kw: rerun))
    assert main(args) == 0
    assert rerun.images == []
    results = json.loads((output / "results.json").read_text())
    assert results["datasets"]["csv"]["completions"] == 6


def test_score_cli_settings_and_output_errors(tmp_path, scripted_model, capsys, monkeypatch):
    from aesr1.score.__main__ import main

    model, loads = scripted_model
    image = write_image(tmp_path / "a.png")
    assert main([str(image), "--model", str(model), "--top-p", "5"]) == 2
    assert capsys.readouterr().err.strip() == "error: top_p must lie in (0, 1], got 5.0"
    assert loads == []

    class FullStdout:
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            pass

    monkeypatch.setattr("sys.stdout", FullStdout())
    assert main([str(image), "--model", str(model), "--jsonl", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert (
        err.strip().splitlines()[-1]
        == "error: writing the results to standard output: No space left on device"
    )


def test_train_cli_os_errors_are_one_line(tmp_path, capsys, monkeypatch):
    import aesr1.train.pipeline
    from aesr1.train.__main__ import main

    (tmp_path / "file").write_text("a regular file")
    output = tmp_path / "file" / "run"
    assert main(["--data", "synthetic", "--output-dir", str(output), "--set", "sft.num_train_epochs=0"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {output}: Not a directory"

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(aesr1.train.pipeline, "run_pipeline", full_disk)
    output = tmp_path / "run"
    assert main(["--data", "synthetic", "--output-dir", str(output), "--set", "sft.num_train_epochs=0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"error: No space left on device (output folder {output})"


# ------------------------------------------------------------------------------ strict JSON


def test_results_json_is_strict_json(tmp_path):
    from aesr1.jsonio import dumps, write_json

    value = {"plcc": math.nan, "params": (1.0, math.inf), "array": np.array([np.float32("nan"), 2.0])}
    assert json.loads(dumps(value)) == {"plcc": None, "params": [1.0, None], "array": [None, 2.0]}
    write_json(tmp_path / "r.json", {"rows": [np.float64("-inf")]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"rows": [None]}

    result = EvalResult("m", {"x": DatasetResult("x", "x", "X", logistic_params=[1.0, math.inf, 0.5, 0.1])})
    result.save_json(tmp_path / "results.json")

    def reject(token):
        raise ValueError(f"not JSON: {token}")

    saved = json.loads((tmp_path / "results.json").read_text(), parse_constant=reject)
    assert saved["datasets"]["x"]["logistic_params"] == [1.0, None, 0.5, 0.1]
    assert saved["datasets"]["x"]["plcc"] is None
