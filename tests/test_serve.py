"""`aesr1.serve`: the HTTP scoring service. The API contract (rows are `ScoreResult.to_dict()`, compare
is Eq. 3 of both rows), dynamic batching (concurrent requests share a model call and get the results
each would get alone, also with the tiny model), every error answer (400, 401, 403, 413, 415, 422,
429, 500, 504: JSON naming the problem, the worker unharmed), /metrics, graceful shutdown, the
command line, and the load benchmark's smoke run.

Most tests use a Scorer with a scripted predictor (the answer is an image's brightness): fast, and a
gate lets a test hold the worker to fill the queue deterministically."""

from __future__ import annotations

import base64
import io
import json
import os
import random
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
pytest.importorskip("python_multipart")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image, ImageStat  # noqa: E402

from aesr1.score import Scorer, ScoreResult  # noqa: E402
from aesr1.score.compare import preference_probability  # noqa: E402
from aesr1.serve import ServeConfig, create_app  # noqa: E402
from aesr1.serve.batching import Batcher, ShuttingDown  # noqa: E402

BENCHES = Path(__file__).resolve().parent.parent / "benches"
ROW_KEYS = set(ScoreResult("x", None, "").to_dict())


class PixelPredictor:
    """Scripted completions: the answer is the image's mean brightness. Sample mode adds noise drawn
    from `key` (set per image by the ModeRunner, from its pixels), as the model predictor seeds its
    sampling. With `gate`, every call waits for it: a test holds the worker while requests queue."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False):
        self.key = ""
        self.calls: list[int] = []
        self.gate, self.fail = gate, fail
        self.entered = threading.Event()

    def __call__(self, images, num_samples):
        self.calls.append(len(images))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(20), "the test never opened the gate"
        if self.fail:
            raise RuntimeError("boom")
        out = []
        for image in images:
            value = ImageStat.Stat(image.convert("L")).mean[0] / 255
            if value < 0.05:  # a black image gets an answer that does not parse
                out.append(["<think>Too dark to judge.</think>"] * num_samples)
                continue
            rng = random.Random(self.key)
            noise = [0.0] if num_samples == 1 else [rng.uniform(-0.05, 0.05) for _ in range(num_samples)]
            out.append(
                [f"<think>Brightness {value:.3f}.</think><answer>{value + d:.3f}</answer>" for d in noise]
            )
        return out


def scripted(mode: str = "greedy", **kwargs) -> Scorer:
    predictor = kwargs.pop("predictor", None) or PixelPredictor()
    return Scorer(predictor=predictor, mode=mode, **kwargs)


def png(color, size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def wrapped(data: bytes) -> str:
    """Base64 in lines of 76 characters, as the `base64` command writes it."""
    return base64.encodebytes(data).decode()


@contextmanager
def serving(scorer, **config):
    app = create_app(scorer, ServeConfig(**config))
    with TestClient(app) as client:
        yield client


def metric(client, line_start: str) -> float:
    """The value of the first /metrics line that starts with `line_start`."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric line starts with {line_start!r}")


def wait_for(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def alone(scorer, data: bytes, name: str) -> dict:
    """The row of one image scored by itself, outside the server."""
    with Image.open(io.BytesIO(data)) as image:
        row = scorer([image])[0].to_dict()
    return {**row, "image": name}


def in_threads(calls):
    """Run the callables concurrently; their return values in order."""
    out = [None] * len(calls)
    errors = []

    def run(i, call):
        try:
            out[i] = call()
        except BaseException as error:  # reported in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    return threads, out, errors


# ------------------------------------------------------------------------------------ contract


def test_score_rows_are_score_result_dicts_whichever_way_images_are_sent(tmp_path):
    scorer = scripted(scale="1-10")
    red, grey = png((200, 40, 40)), png((120, 120, 120), (48, 24))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "grey.png").write_bytes(grey)
    with serving(scorer, allow_paths=str(tmp_path)) as client:
        files = [("image", ("red.png", red, "image/png")), ("image", ("grey.png", grey, "image/png"))]
        upload = client.post("/v1/score", files=files)
        as_json = client.post(
            "/v1/score",
            json={
                "images": [b64(red), {"data": "data:image/png;base64," + wrapped(grey), "name": "grey.png"}]
            },
        )
        by_path = client.post("/v1/score", json={"images": [{"path": "sub/grey.png"}]})
    assert upload.status_code == as_json.status_code == by_path.status_code == 200, upload.text
    rows = upload.json()["results"]
    assert [set(row) for row in rows] == [ROW_KEYS, ROW_KEYS]
    assert rows == [alone(scorer, red, "red.png"), alone(scorer, grey, "grey.png")]
    assert rows[0]["scale"] == "1-10" and rows[0]["mode"] == "greedy" and 1 <= rows[0]["score"] <= 10
    assert rows[0]["critique"].startswith("Brightness")
    assert as_json.json()["results"] == [{**rows[0], "image": "image 0"}, rows[1]]
    assert by_path.json()["results"] == [{**rows[1], "image": "sub/grey.png"}]


def test_compare_is_eq3_of_both_rows():
    scorer = scripted("sample", scale="1-5")
    bright, dim = png((230, 220, 200)), png((60, 70, 80))
    with serving(scorer) as client:
        answer = client.post(
            "/v1/compare", json={"a": b64(dim), "b": {"data": b64(bright), "name": "bright"}}
        )
        upload = client.post("/v1/compare", files={"a": ("dim.png", dim), "b": ("bright.png", bright)})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    row_a, row_b = body["results"]
    assert row_a == alone(scorer, dim, "a") and row_b == alone(scorer, bright, "bright")
    unit = [((row["score"] - 1) / 4, row["std"] / 4) for row in (row_a, row_b)]
    assert body["probability"] == pytest.approx(preference_probability(*unit[0], *unit[1]), abs=1e-12)
    assert body["probability"] < 0.5 and body["winner"] == "b"
    assert (body["a"], body["b"], body["scale"]) == ("a", "bright", "1-5")
    assert (body["score_a"], body["std_a"]) == (row_a["score"], row_a["std"])
    assert upload.status_code == 200 and upload.json()["probability"] == body["probability"]


def test_page_health_and_metrics_text():
    with serving(scripted(), max_batch_size=4) as client:
        page = client.get("/")
        health = client.get("/healthz").json()
        assert client.post("/v1/score", files={"image": ("x.png", png((9, 99, 199)))}).status_code == 200
        assert client.post("/v1/score", json={"images": []}).status_code == 422
        metrics = client.get("/metrics")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for text in ("/v1/score", "/v1/compare", "P(A > B)", "textContent", 'type="file"'):
        assert text in page.text
    assert health == {
        "status": "ok", "model": None, "revision": None, "mode": "greedy", "scale": "0-1",
        "preset": "aesr1", "max_batch_size": 4, "max_images_per_request": 16, "queue_depth": 0,
        "api_key_required": False,
    }  # fmt: skip
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for line in (
        'aesr1_serve_requests_total{endpoint="/v1/score",status="200"} 1.0',
        'aesr1_serve_requests_total{endpoint="/v1/score",status="422"} 1.0',
        'aesr1_serve_errors_total{endpoint="/v1/score",status="422"} 1.0',
        'aesr1_serve_requests_total{endpoint="/healthz",status="200"} 1.0',
        "aesr1_serve_queue_depth 0.0",
        "aesr1_serve_batch_size_count 1.0",
        'aesr1_serve_batch_size_bucket{le="1.0"} 1.0',
        "aesr1_serve_images_total 1.0",
        'aesr1_serve_request_seconds_count{endpoint="/v1/score"} 2.0',
        "# TYPE aesr1_serve_request_seconds histogram",
        "# TYPE aesr1_serve_batch_seconds histogram",
    ):
        assert line in text, line


# ------------------------------------------------------------------------------------ batching


@pytest.mark.parametrize("mode", ["greedy", "sample"])
def test_concurrent_requests_share_a_model_call_and_get_what_each_gets_alone(mode):
    gate = threading.Event()
    predictor = PixelPredictor(gate)
    scorer = scripted(mode, predictor=predictor)
    reference = scripted(mode)  # same settings, its own predictor: each image alone
    images = [png((40 * i + 20, 90, 200 - 30 * i), (32 + 8 * i, 32)) for i in range(5)]
    with serving(scorer, max_batch_size=8, max_wait_ms=5) as client:
        batcher = client.app.state.batcher

        def post(i):
            return lambda: client.post("/v1/score", files={"image": (f"{i}.png", images[i])})

        first, out, errors = in_threads([post(0)])
        wait_for(predictor.entered.is_set)  # the worker holds request 0 at the gate
        rest, more, more_errors = in_threads([post(i) for i in range(1, 5)])
        wait_for(lambda: batcher.queue_depth == 4)
        gate.set()
        for thread in first + rest:
            thread.join(20)
        assert not errors and not more_errors, errors + more_errors
        rows = [response.json()["results"][0] for response in out + more]
        assert metric(client, "aesr1_serve_batch_size_count") == 2
        assert metric(client, "aesr1_serve_batch_size_sum") == 5
        assert metric(client, 'aesr1_serve_batch_size_bucket{le="3.0"}') == 1  # the batch of 4 is above
    assert [response.status_code for response in out + more] == [200] * 5
    assert rows == [alone(reference, images[i], f"{i}.png") for i in range(5)]
    # greedy: one generate per batch; sample: one per image, each seeded from its pixels
    assert predictor.calls == ([1, 4] if mode == "greedy" else [1] * 5)


@pytest.mark.parametrize("mode", ["greedy", "expected"])
def test_tiny_model_batched_results_equal_results_alone(overfit_model_dir, mode):
    scorer = Scorer(overfit_model_dir, mode=mode, max_new_tokens=24, device="cpu", batch_size=4)
    images = [png((230, 200, 40), (56, 56)), png((20, 60, 200), (84, 56)), png((90, 90, 90), (56, 84)),
              png((250, 250, 250), (70, 70))]  # fmt: skip
    expected = [alone(scorer, data, f"{i}.png") for i, data in enumerate(images)]
    # A batch closes as soon as it holds max_batch_size images: the long wait costs nothing when
    # the four requests arrive together, and makes the one batch certain.
    with serving(scorer, max_batch_size=4, max_wait_ms=10_000) as client:
        threads, out, errors = in_threads(
            [lambda i=i: client.post("/v1/score", json={"images": [{"data": b64(images[i]), "name": f"{i}.png"}]})
             for i in range(4)]
        )  # fmt: skip
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        assert metric(client, "aesr1_serve_batch_size_count") == 1
        assert metric(client, "aesr1_serve_batch_size_sum") == 4
    rows = [response.json()["results"][0] for response in out]
    for row, want in zip(rows, expected, strict=True):
        assert row["completions"] == want["completions"] and row["critique"] == "Warm light and bold colour."
        if mode == "greedy":
            assert row == want
        else:  # padded batched matmuls round differently: equal to 1e-6 (README: Determinism)
            assert row["score"] == pytest.approx(want["score"], abs=1e-6)
            assert row["std"] == pytest.approx(want["std"], abs=1e-6)
            assert row["distribution"].keys() == want["distribution"].keys()
            assert list(row["distribution"].values()) == pytest.approx(
                list(want["distribution"].values()), abs=1e-6
            )


def test_a_request_over_max_batch_size_is_scored_in_calls_of_that_size():
    predictor = PixelPredictor()
    images = [("image", (f"{i}.png", png((20 * i, 50, 50)))) for i in range(5)]
    with serving(scripted(predictor=predictor), max_batch_size=2) as client:
        rows = client.post("/v1/score", files=images).json()["results"]
        assert metric(client, "aesr1_serve_batch_size_count") == 3
    assert [row["image"] for row in rows] == [f"{i}.png" for i in range(5)]
    assert predictor.calls == [2, 2, 1]


def test_batcher_close_scores_what_is_queued_and_then_refuses():
    gate = threading.Event()
    predictor = PixelPredictor(gate)
    batcher = Batcher(scripted(predictor=predictor), max_batch_size=2, max_wait_s=0.0, max_queue=8)
    batcher.start()
    image = Image.new("RGB", (32, 32), (100, 150, 200))
    futures = [batcher.submit([image], ["0"])]
    wait_for(predictor.entered.is_set)  # the worker holds the first job; four queue behind it
    futures += [batcher.submit([image], [f"{i}"]) for i in range(1, 5)]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    wait_for(lambda: batcher.closing)
    with pytest.raises(ShuttingDown):
        batcher.submit([image], ["late"])
    gate.set()
    closer.join(20)
    assert not batcher.running
    assert [future.result(0)[0].image for future in futures] == ["0", "1", "2", "3", "4"]
    assert predictor.calls == [1, 2, 2]


def test_graceful_shutdown_answers_queued_requests(tmp_path):
    uvicorn = pytest.importorskip("uvicorn")
    import httpx

    gate = threading.Event()
    predictor = PixelPredictor(gate)
    app = create_app(scripted(predictor=predictor), ServeConfig(max_batch_size=2, max_wait_ms=0))
    server, port, thread = _start_uvicorn(uvicorn, app)
    try:
        url = f"http://127.0.0.1:{port}/v1/score"

        def post(i):
            return lambda: httpx.post(url, files={"image": (f"{i}.png", png((50 * i, 80, 90)))}, timeout=30)

        threads, out, errors = in_threads([post(1)])
        wait_for(predictor.entered.is_set)  # the worker holds request 1 at the gate
        more_threads, more, more_errors = in_threads([post(2), post(3)])
        wait_for(lambda: app.state.batcher.queue_depth == 2)
        server.should_exit = True
        time.sleep(0.2)  # the server stops listening and waits for the three open requests
        gate.set()
        for client_thread in threads + more_threads:
            client_thread.join(30)
        thread.join(30)
    finally:
        server.should_exit = True
        gate.set()
    assert not errors and not more_errors, errors + more_errors
    responses = out + more
    assert [response.status_code for response in responses] == [200, 200, 200]
    assert [response.json()["results"][0]["image"] for response in responses] == ["1.png", "2.png", "3.png"]
    assert not thread.is_alive() and not app.state.batcher.running


def _start_uvicorn(uvicorn, app):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started)
    return server, port, thread


# --------------------------------------------------------------------------------------- errors


def _error(response, status: int, *fragments: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    message = response.json()["error"]
    assert set(response.json()) == {"error"}
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_bad_requests_are_answered_4xx_naming_the_problem_and_the_worker_goes_on():
    good = png((120, 160, 200))
    truncated = good[: len(good) // 2]
    with serving(scripted(), max_images_per_request=2, max_queue=8) as client:
        post = client.post
        _error(post("/v1/score", files={"image": ("bad.png", b"not an image")}), 422,
               "image[0] ('bad.png')", "unreadable image")  # fmt: skip
        _error(post("/v1/score", files={"image": ("cut.png", truncated)}), 422, "cut.png", "unreadable image")
        _error(post("/v1/score", json={"images": ["!!notbase64"]}), 422, "images[0]", "not valid base64")
        _error(post("/v1/score", json={"imgs": []}), 422, "unknown field(s) 'imgs'")
        _error(post("/v1/score", json={"images": "x"}), 422, "'images': a list")
        _error(post("/v1/score", json={"images": [7]}), 422, "images[0] must be a base64 string")
        _error(post("/v1/score", json={"images": [{"data": b64(good), "colour": 1}]}), 422, "'colour'")
        _error(post("/v1/score", json={"images": [{"name": "x"}]}), 422, "exactly one of 'data'")
        _error(post("/v1/score", json={"images": []}), 422, "no images")
        _error(post("/v1/score", json=[1]), 422, "must be an object")
        _error(post("/v1/score", content=b"{nope", headers={"content-type": "application/json"}), 400,
               "not valid JSON")  # fmt: skip
        _error(post("/v1/score", content=b"x", headers={"content-type": "text/plain"}), 415, "'text/plain'")
        _error(post("/v1/score", files={"file": ("a.png", good)}), 422, "unknown form field 'file'")
        _error(post("/v1/score", files={"image": (None, "a path")}), 422, "must be a file upload")
        _error(post("/v1/compare", json={"a": b64(good)}), 422, "missing image(s) 'b'")
        _error(post("/v1/compare", files=[("a", ("1.png", good)), ("a", ("2.png", good)), ("b", ("3.png", good))]),
               422, "'a' given twice")  # fmt: skip
        _error(post("/v1/compare", json={"a": b64(good), "b": b64(png((0, 0, 0)))}), 422, "has no score")
        _error(client.get("/v1/nothing"), 404, "Not Found")
        _error(client.get("/v1/score"), 405, "Method Not Allowed")
        assert post("/v1/score", files={"image": ("ok.png", good)}).status_code == 200


def test_size_limits_are_413(monkeypatch):
    good = png((120, 160, 200))
    big = os.urandom(2500)  # not an image: the limit is checked before decoding
    with serving(scripted(), max_body_bytes=4000, max_image_bytes=2000, max_images_per_request=2) as client:
        post = client.post
        _error(post("/v1/score", content=b"x" * 5000, headers={"content-type": "application/json"}), 413,
               "request body of 5000 bytes exceeds the limit of 4000 bytes")  # fmt: skip

        def chunks():  # no Content-Length: the limit applies as the body arrives
            for _ in range(5):
                yield b"x" * 1000

        _error(post("/v1/score", content=chunks(), headers={"content-type": "application/json"}), 413,
               "request body exceeds the limit of 4000 bytes")  # fmt: skip
        _error(
            post("/v1/score", files={"image": ("big.png", big)}), 413, "big.png", "image limit of 2000 bytes"
        )
        _error(post("/v1/score", json={"images": [b64(big)]}), 413, "images[0]", "image limit")
        _error(
            post("/v1/score", json={"images": [b64(good)] * 3}),
            413,
            "3 images in one request; the limit is 2",
        )
        _error(post("/v1/score", files=[("image", (f"{i}.png", good)) for i in range(3)]), 413, "limit is 2")
        _error(post("/v1/score", files=[("image", (f"{i}.png", b"x")) for i in range(5)]), 413, "more than 2")
        with monkeypatch.context() as patch, pytest.warns(Image.DecompressionBombWarning):
            patch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL would only warn up to twice this
            _error(post("/v1/score", files={"image": ("wide.png", png((1, 2, 3), (40, 30)))}), 413,
                   "wide.png", "40x30 pixels, over the limit of 1000 pixels")  # fmt: skip
        assert post("/v1/score", files={"image": ("ok.png", good)}).status_code == 200
        assert metric(client, 'aesr1_serve_errors_total{endpoint="/v1/score",status="413"}') == 8


def test_a_full_queue_is_429_with_retry_after():
    gate = threading.Event()
    predictor = PixelPredictor(gate)
    images = [png((30 * i, 100, 100)) for i in range(4)]
    with serving(
        scripted(predictor=predictor), max_queue=2, max_images_per_request=2, max_wait_ms=0
    ) as client:
        post = lambda files: lambda: client.post("/v1/score", files=files)  # noqa: E731
        held, held_out, _ = in_threads([post({"image": ("0.png", images[0])})])
        wait_for(predictor.entered.is_set)
        queued, queued_out, _ = in_threads(
            [post([("image", ("1.png", images[1])), ("image", ("2.png", images[2]))])]
        )
        wait_for(lambda: client.app.state.batcher.queue_depth == 2)
        refused = client.post("/v1/score", files={"image": ("3.png", images[3])})
        _error(refused, 429, "queue is full (2 of 2 images waiting)")
        assert int(refused.headers["retry-after"]) >= 1
        assert metric(client, "aesr1_serve_queue_depth") == 2
        gate.set()
        for thread in held + queued:
            thread.join(20)
        assert [r.status_code for r in held_out + queued_out] == [200, 200]
        assert client.post("/v1/score", files={"image": ("3.png", images[3])}).status_code == 200


def test_timeout_is_504_and_a_timed_out_request_leaves_the_queue():
    gate = threading.Event()
    predictor = PixelPredictor(gate)
    with serving(scripted(predictor=predictor), timeout_s=0.3, max_wait_ms=0) as client:
        _error(client.post("/v1/score", files={"image": ("slow.png", png((1, 200, 3)))}), 504,
               "no result within the request timeout of 0.3 s")  # fmt: skip
        # The worker still holds the first request; this one times out while queued and is dropped.
        _error(client.post("/v1/score", files={"image": ("queued.png", png((5, 5, 200)))}), 504)
        assert client.app.state.batcher.queue_depth == 0
        gate.set()
        wait_for(lambda: len(predictor.calls) == 1 and client.app.state.batcher.queue_depth == 0)
        ok = client.post("/v1/score", files={"image": ("ok.png", png((100, 100, 100)))})
        assert ok.status_code == 200
    assert predictor.calls == [1, 1]  # the dropped request was never scored


def test_a_scoring_failure_is_500_and_the_worker_survives():
    predictor = PixelPredictor(fail=True)
    with serving(scripted(predictor=predictor)) as client:
        _error(client.post("/v1/score", files={"image": ("x.png", png((9, 9, 99)))}), 500,
               "scoring failed: RuntimeError: boom")  # fmt: skip
        predictor.fail = False
        assert client.post("/v1/score", files={"image": ("x.png", png((9, 9, 99)))}).status_code == 200


def test_api_key(monkeypatch):
    monkeypatch.setenv("AESR1_TEST_KEY", "s3cret-ключ")
    image = {"image": ("x.png", png((9, 99, 9)))}
    with serving(scripted(), api_key_env="AESR1_TEST_KEY") as client:
        missing = client.post("/v1/score", files=image)
        _error(missing, 401, "missing API key")
        assert missing.headers["www-authenticate"] == "Bearer"
        key = "s3cret-ключ".encode()
        _error(
            client.post("/v1/score", files=image, headers={"Authorization": b"Bearer s3cret"}),
            401,
            "wrong API key",
        )
        _error(client.post("/v1/compare", json={}, headers={"X-API-Key": b"nope"}), 401, "wrong API key")
        assert (
            client.post("/v1/score", files=image, headers={"Authorization": b"Bearer " + key}).status_code
            == 200
        )
        assert client.post("/v1/score", files=image, headers={"X-API-Key": key}).status_code == 200
        assert client.get("/healthz").json()["api_key_required"] is True
        assert client.get("/metrics").status_code == 200 and client.get("/").status_code == 200
    monkeypatch.delenv("AESR1_TEST_KEY")
    with pytest.raises(ValueError, match="AESR1_TEST_KEY"):
        create_app(scripted(), ServeConfig(api_key_env="AESR1_TEST_KEY"))


def test_paths_only_inside_the_allowed_folder(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside.png"
    root.mkdir()
    outside.write_bytes(png((1, 2, 3)))
    (root / "in.png").write_bytes(png((50, 100, 150)))
    (root / "link.png").symlink_to(outside)
    (root / "text.png").write_text("not an image")
    request = lambda path: {"images": [{"path": path}]}  # noqa: E731
    with serving(scripted()) as client:
        _error(client.post("/v1/score", json=request("in.png")), 403, "reads no paths", "--allow-paths")
    with serving(scripted(), allow_paths=str(root)) as client:
        assert client.post("/v1/score", json=request("in.png")).status_code == 200
        assert client.post("/v1/score", json=request(str(root / "in.png"))).status_code == 200
        _error(client.post("/v1/score", json=request("../outside.png")), 403, "outside the folder")
        _error(client.post("/v1/score", json=request(str(outside))), 403, "outside the folder")
        _error(client.post("/v1/score", json=request("link.png")), 403, "'link.png'", "outside the folder")
        _error(client.post("/v1/score", json=request("missing.png")), 422, "missing.png", "no such file")
        _error(client.post("/v1/score", json=request("text.png")), 422, "text.png", "unreadable image")
        _error(client.post("/v1/score", json=request(".")), 422, "unreadable image", "not a regular file")
    with pytest.raises(ValueError, match="not a folder"):
        create_app(scripted(), ServeConfig(allow_paths=str(outside)))


def test_config_checks():
    for bad in (dict(max_batch_size=0), dict(max_wait_ms=-1), dict(timeout_s=0), dict(port=70000),
                dict(max_queue=4, max_images_per_request=5), dict(api_key_env=""), dict(max_body_bytes=1.5)):  # fmt: skip
        with pytest.raises(ValueError):
            ServeConfig(**bad)


# ---------------------------------------------------------------------------------- command line


def test_command_line_checks_flags_before_the_model_loads(capsys, monkeypatch, tmp_path):
    from aesr1.cli import main as aesr1_main
    from aesr1.serve.__main__ import main

    monkeypatch.delenv("AESR1_UNSET_KEY", raising=False)
    absent = str(tmp_path / "no-model")
    assert main(["--model", absent, "--max-batch-size", "0"]) == 2
    assert "max_batch_size must be a positive integer" in capsys.readouterr().err
    assert main(["--model", absent, "--api-key-env", "AESR1_UNSET_KEY"]) == 2
    assert "AESR1_UNSET_KEY" in capsys.readouterr().err
    assert aesr1_main(["serve", "--model", absent, "--allow-paths", absent]) == 2
    assert "is not a folder" in capsys.readouterr().err

    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a)
    )
    assert main(["--model", absent]) == 1
    assert "aesr1[train,serve]" in capsys.readouterr().err


def test_command_line_serves_the_scorer_its_flags_describe(monkeypatch, overfit_model_dir):
    import uvicorn

    from aesr1.serve.__main__ import main

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(app=app, **kwargs))
    argv = ["--model", str(overfit_model_dir), "--mode", "expected", "--scale", "1-10", "--device", "cpu",
            "--max-batch-size", "3", "--port", "9123", "--timeout", "5", "--max-image-mb", "0.5"]  # fmt: skip
    assert main(argv) == 0
    state = seen["app"].state
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 9123)
    assert (state.scorer.mode, state.scorer.scale.name, state.scorer.batch_size) == ("expected", "1-10", 3)
    assert (state.config.max_batch_size, state.config.timeout_s, state.config.max_image_bytes) == (
        3,
        5.0,
        2**19,
    )


# ------------------------------------------------------------------------------------ benchmark


def test_load_benchmark_smoke(overfit_model_dir, tmp_path):
    sys.path.insert(0, str(BENCHES))
    try:
        import bench_serve
    finally:
        sys.path.remove(str(BENCHES))
    out = tmp_path / "serve.json"
    assert bench_serve.main(["--smoke", "--model", str(overfit_model_dir), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    server, sequential = report["server"], report["sequential"]
    assert (
        server["answered"] == server["requests"] == sequential["requests"] == report["workload"]["requests"]
    )
    assert server["matches_sequential"] is True and server["duplicates"] == 0 and server["missing"] == 0
    assert server["scored_images"] == server["requests"]
    for row in (server, sequential):
        assert row["throughput_rps"] > 0 and 0 < row["p50_s"] <= row["p99_s"]
