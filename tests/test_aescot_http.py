"""AesCoT against a real local HTTP server speaking the chat-completions protocol (loopback only).

The server answers scripted critiques, judge verdicts, 429s (with Retry-After), 500s, malformed
bodies and delays longer than the client timeout; the pipeline must survive them, balance the bins,
drop leaking / inconsistent / factually wrong items with the right reason, and resume after a
SIGKILL without duplicating or losing items.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from aesr1.aescot import (
    ChatClient,
    ChatError,
    ChatExpert,
    ChatFatalError,
    ChatJudge,
    EndpointConfig,
    build_dataset,
)
from aesr1.aescot.chat_client import image_data_url, parse_retry_after
from aesr1.aescot.inputs import load_items
from aesr1.aescot.ratelimit import TokenBucket
from aesr1.aescot.store import OutputPaths, read_jsonl
from aesr1.data.records import ScoredImage
from aesr1.prompts import DIMENSIONS, score_bin

JUDGE_MARKER = "You audit training data"
VERDICT_WORD = {"bad": "weak", "fair": "average", "good": "strong"}


def clean_critique_for(score: float) -> str:
    return (
        "Light and shadow: the side light models the forms and keeps detail in the shadows. "
        "Mood and narrative: a quiet scene with a simple story. Composition: the subject sits off centre "
        "with room to breathe. Color: a restrained palette. Exposure: tones are well placed. "
        f"Overall, a {VERDICT_WORD[score_bin(score)]} image."
    )


def ok_verdict(consistent=True, errors=()):
    return json.dumps(
        {
            "consistent": consistent,
            "consistency_reason": "matches" if consistent else "the critique praises a poor picture",
            "factually_accurate": not errors,
            "factual_errors": list(errors),
        }
    )


class FakeChatServer:
    """Chat-completions on 127.0.0.1:<ephemeral>; per (image, kind) scripts of steps, the last repeating.

    A step is a dict: ``{"status": 429, "headers": {...}}``, ``{"text": ..., "finish_reason": ...}``,
    ``{"raw": "not json"}``; any step may carry ``"sleep": seconds`` before it answers.
    Unscripted expert requests get a clean critique matching the score in the prompt (after
    `expert_delay`), unscripted judge requests a passing verdict.
    """

    def __init__(self):
        self.scripts: dict[tuple[str, str], list[dict]] = {}
        self.requests: list[dict] = []
        self.expert_delay = 0.0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as separate writes

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                step, record = server.next_step(body, dict(self.headers))
                if step.get("sleep"):
                    time.sleep(step["sleep"])
                try:
                    if "status" in step:
                        self._send(
                            step["status"], {"error": {"message": "scripted"}}, step.get("headers", {})
                        )
                    elif "raw" in step:
                        self._send(200, None, raw=step["raw"].encode())
                    else:
                        message = {"role": "assistant", "content": step["text"]}
                        self._send(
                            200,
                            {
                                "id": "x",
                                "object": "chat.completion",
                                "model": body["model"],
                                "choices": [
                                    {
                                        "index": 0,
                                        "message": message,
                                        "finish_reason": step.get("finish_reason", "stop"),
                                    }
                                ],
                                "usage": {"prompt_tokens": 10, "completion_tokens": 20},
                            },
                        )
                except (BrokenPipeError, ConnectionResetError):
                    record["client_gone"] = True

            def _send(self, status, payload, headers=None, raw=None):
                data = raw if raw is not None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # a timed-out client closed its socket
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @staticmethod
    def key_of(url: str) -> str:
        return hashlib.sha1(url.encode()).hexdigest()[:16]

    def script(self, item: ScoredImage, kind: str, steps: list[dict]) -> None:
        self.scripts[(self.key_of(image_data_url(item.image)), kind)] = list(steps)

    def next_step(self, body, headers):
        content = body["messages"][-1]["content"]
        text = " ".join(part["text"] for part in content if part["type"] == "text")
        url = next(part["image_url"]["url"] for part in content if part["type"] == "image_url")
        kind = "judge" if JUDGE_MARKER in text else "expert"
        key = self.key_of(url)
        record = {
            "time": time.monotonic(),
            "kind": kind,
            "key": key,
            "body": body,
            "headers": headers,
            "text": text,
        }
        with self.lock:
            self.requests.append(record)
            steps = self.scripts.get((key, kind))
            if steps:
                step = steps.pop(0) if len(steps) > 1 else steps[0]
            elif kind == "expert":
                score = float(re.search(r"is (\d\.\d\d)\.", text).group(1))
                step = {"text": clean_critique_for(score), "sleep": self.expert_delay}
            else:
                step = {"text": ok_verdict()}
        return step, record

    def count(self, kind=None, key=None):
        with self.lock:
            return sum(
                1
                for r in self.requests
                if (kind is None or r["kind"] == kind) and (key is None or r["key"] == key)
            )

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def server():
    with FakeChatServer() as fake:
        yield fake


def make_items(root, scores, source="fake"):
    """One tiny PNG per score, each a different colour so every image has its own data URL."""
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for index, score in enumerate(scores):
        path = root / f"img{index:03d}.png"
        Image.new("RGB", (8, 8), (index * 7 % 256, index * 13 % 256, index * 29 % 256)).save(path)
        items.append(ScoredImage(str(path), score, source, f"img{index:03d}"))
    return items


def endpoint(server, **overrides):
    settings = dict(
        base_url=server.base_url,
        model="fake-vlm",
        api_key_env="AESCOT_TEST_KEY",
        timeout_s=5.0,
        max_retries=4,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
    )
    settings.update(overrides)
    return EndpointConfig(**settings)


def run(coro):
    return asyncio.run(coro)


# ------------------------------------------------------------------------------------------- client


def test_request_carries_prompt_image_and_key(server, tmp_path, monkeypatch):
    monkeypatch.setenv("AESCOT_TEST_KEY", "sk-test")
    item = make_items(tmp_path, [0.724])[0]
    expert = ChatExpert(endpoint(server), temperature=0.3, max_tokens=321)

    async def go():
        try:
            return await expert.critique(item)
        finally:
            await expert.aclose()

    answer = run(go())
    assert answer.text == clean_critique_for(0.724) and answer.finish_reason == "stop"
    (request,) = server.requests
    body = request["body"]
    assert body["model"] == "fake-vlm" and body["temperature"] == 0.3 and body["max_tokens"] == 321
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    parts = body["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text"]
    assert parts[0]["text"].endswith("The aesthetic rating of this picture")
    assert parts[2]["text"].startswith("is 0.72.")
    assert all(name in parts[2]["text"] for name in DIMENSIONS)
    url = parts[1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == Path(item.image).read_bytes()


def test_no_authorization_header_without_key(server, tmp_path, monkeypatch):
    monkeypatch.delenv("AESCOT_TEST_KEY", raising=False)
    item = make_items(tmp_path, [0.5])[0]
    expert = ChatExpert(endpoint(server))
    run(expert.critique(item))
    assert "Authorization" not in server.requests[0]["headers"]


def test_client_survives_429_500_timeout_and_malformed_body(server, tmp_path):
    item = make_items(tmp_path, [0.3])[0]
    server.script(
        item,
        "expert",
        [
            {"status": 429, "headers": {"Retry-After": "0.01"}},
            {"status": 500},
            {"sleep": 0.8, "text": "too late"},  # longer than the 0.3 s timeout
            {"raw": "{not json"},
            {"status": 502},
            {"text": "finally a critique"},
        ],
    )
    client = ChatClient(endpoint(server, timeout_s=0.3, max_retries=6))
    expert = ChatExpert(client)
    answer = run(expert.critique(item))
    assert answer.text == "finally a critique"
    stats = client.stats
    assert stats["status_429"] == 1 and stats["status_500"] == 1 and stats["status_502"] == 1
    assert stats["timeouts"] == 1 and stats["malformed_responses"] == 1
    assert stats["retries"] == 5 and stats["requests"] == 6 and server.count("expert") == 6
    assert stats["prompt_tokens"] == 10 and stats["completion_tokens"] == 20  # usage of the one answer


def test_retry_after_is_honoured_over_backoff(server, tmp_path):
    item = make_items(tmp_path, [0.3])[0]
    server.script(item, "expert", [{"status": 429, "headers": {"Retry-After": "0.3"}}, {"text": "ok"}])
    # A 30 s backoff would stall the test: only Retry-After may decide the wait.
    expert = ChatExpert(endpoint(server, backoff_initial_s=30.0, backoff_max_s=30.0))
    assert run(expert.critique(item)).text == "ok"
    first, second = server.requests
    assert second["time"] - first["time"] >= 0.3


def test_retry_after_pauses_every_request_of_the_client(server, tmp_path):
    first, second = make_items(tmp_path, [0.3, 0.6])
    server.script(first, "expert", [{"status": 429, "headers": {"Retry-After": "0.4"}}, {"text": "one"}])
    # The second item's first answer is a 500 that arrives after the 429, so its retry falls inside the pause.
    server.script(second, "expert", [{"sleep": 0.1, "status": 500}, {"text": "two"}])
    client = ChatClient(endpoint(server))
    expert = ChatExpert(client)

    async def go():
        return await asyncio.gather(expert.critique(first), expert.critique(second))

    assert [c.text for c in run(go())] == ["one", "two"]
    start = min(r["time"] for r in server.requests)
    second_key = server.key_of(image_data_url(second.image))
    retry = [r for r in server.requests if r["key"] == second_key][1]
    assert retry["time"] - start >= 0.4  # not just the 10 ms backoff of its own 500


def test_retries_exhausted_and_fatal_statuses(server, tmp_path):
    items = make_items(tmp_path, [0.2, 0.5, 0.8])
    server.script(items[0], "expert", [{"status": 503}])
    server.script(items[1], "expert", [{"status": 401}])
    server.script(items[2], "expert", [{"status": 400}])
    expert = ChatExpert(endpoint(server, max_retries=2))
    with pytest.raises(ChatError, match="gave up after 3 attempts: HTTP 503") as info:
        run(expert.critique(items[0]))
    assert info.value.retryable and server.count(key=server.key_of(image_data_url(items[0].image))) == 3
    with pytest.raises(ChatFatalError, match=r"401 .*AESCOT_TEST_KEY"):
        run(expert.critique(items[1]))
    with pytest.raises(ChatError, match="HTTP 400") as info:
        run(expert.critique(items[2]))
    assert not info.value.retryable and server.count(key=server.key_of(image_data_url(items[2].image))) == 1


def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412470.0) == 10.0
    assert parse_retry_after({"retry-after": "soon"}) is None


def test_token_bucket_on_virtual_time():
    now = [0.0]
    starts = []

    async def fake_sleep(seconds):
        now[0] += seconds

    async def go():
        bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0], sleep=fake_sleep)
        for _ in range(9):
            await bucket.acquire()
            starts.append(now[0])

    run(go())
    # Three at once (the burst), then one every 1/rate seconds.
    assert starts[:3] == [0.0, 0.0, 0.0]
    assert starts[3:] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate=0)


def test_endpoint_config_validation():
    with pytest.raises(ValueError, match="base_url"):
        EndpointConfig(base_url="localhost:8000")
    with pytest.raises(ValueError, match="max_retries"):
        EndpointConfig(max_retries=-1)
    with pytest.raises(ValueError, match="requests_per_minute"):
        EndpointConfig(requests_per_minute=0)
    with pytest.raises(ValueError, match="image_detail"):
        EndpointConfig(image_detail="ultra")


def test_judge_sends_json_mode_and_parses_fenced_verdicts(server, tmp_path):
    items = make_items(tmp_path, [0.2, 0.9])
    server.script(items[0], "judge", [{"text": "```json\n" + ok_verdict(False) + "\n```"}])
    server.script(items[1], "judge", [{"text": "I think it is fine."}, {"text": ok_verdict(True, ["a dog"])}])
    judge = ChatJudge(endpoint(server), parse_retries=1)
    first = run(judge.judge(items[0], "Overall, a strong image with glowing light and a bold palette."))
    assert not first.consistent and first.factually_accurate
    second = run(judge.judge(items[1], "Overall, a strong image."))
    assert second.consistent and not second.factually_accurate and second.factual_errors == ["a dog"]
    body = server.requests[0]["body"]
    assert body["response_format"] == {"type": "json_object"} and body["temperature"] == 0.0
    assert "0.20" in server.requests[0]["text"] and '"bad" band' in server.requests[0]["text"]
    assert server.count("judge") == 3


# ----------------------------------------------------------------------------------------- pipeline


def bin_scores(per_bin):
    scores = []
    for lo in (0.05, 0.45, 0.75):
        scores += [round(lo + 0.02 * i, 2) for i in range(per_bin)]
    return scores


def test_pipeline_survives_errors_and_drops_with_reasons(server, tmp_path):
    items = make_items(tmp_path / "img", bin_scores(6))
    bad, fair, good = items[0:6], items[6:12], items[12:18]
    server.script(
        bad[0],
        "expert",
        [{"status": 429, "headers": {"Retry-After": "0.01"}}, {"text": clean_critique_for(0.05)}],
    )
    server.script(bad[1], "expert", [{"text": clean_critique_for(0.07) + " I would put it at 0.07."}])
    server.script(fair[0], "expert", [{"status": 500}, {"status": 500}, {"text": clean_critique_for(0.45)}])
    server.script(fair[1], "judge", [{"text": ok_verdict(consistent=False)}])
    server.script(fair[2], "judge", [{"text": "no verdict"}, {"text": "still none"}])
    server.script(good[0], "expert", [{"sleep": 0.8, "text": "late"}, {"text": clean_critique_for(0.75)}])
    server.script(good[1], "judge", [{"text": ok_verdict(errors=["describes a red car that is not there"])}])
    server.script(good[2], "expert", [{"text": "Short.", "finish_reason": "stop"}])
    client = ChatClient(endpoint(server, timeout_s=0.3))
    out = tmp_path / "http.jsonl"
    # Targets above what can pass, so every item is tried.
    report = build_dataset(
        items, ChatExpert(client), out, per_bin=6, judge=ChatJudge(client), concurrency=4, progress=False
    )
    kept = read_jsonl(out)
    rejects = {r["id"]: r for r in read_jsonl(OutputPaths.for_output(out).rejects)}
    assert Counter(r["bin"] for r in kept) == {"bad": 5, "fair": 4, "good": 4}
    assert not report.complete and {n: b.shortfall for n, b in report.bins.items()} == {
        "bad": 1,
        "fair": 2,
        "good": 2,
    }
    assert {r["id"] for r in kept} >= {
        f"fake:{i.id}" for i in (bad[0], fair[0], good[0])
    }  # retried, then kept
    assert {k.split(":")[1]: v["reason"] for k, v in rejects.items()} == {
        bad[1].id: "leakage",
        fair[1].id: "inconsistent",
        fair[2].id: "judge_unparseable",
        good[1].id: "factual_error",
        good[2].id: "format",
    }
    assert "number '0.07'" in rejects[f"fake:{bad[1].id}"]["detail"]
    assert "red car" in rejects[f"fake:{good[1].id}"]["detail"]
    assert report.dropped == {
        "missing_image": 0,
        "format": 1,
        "leakage": 1,
        "inconsistent": 1,
        "factual_error": 1,
        "judge_unparseable": 1,
    }
    endpoint_stats = report.this_run["endpoint"]
    assert (
        endpoint_stats["status_429"] == 1
        and endpoint_stats["status_500"] == 2
        and endpoint_stats["timeouts"] == 1
    )
    # The judge saw only critiques that passed the programmatic filters.
    assert server.count("judge", server.key_of(image_data_url(bad[1].image))) == 0
    for record in kept:
        assert record["filters"]["consistency"]["passed"] and record["filters"]["factual"]["passed"]


def test_bins_stop_at_their_target_without_wasted_requests(server, tmp_path):
    items = make_items(tmp_path / "img", bin_scores(8))
    server.script(items[0], "expert", [{"text": clean_critique_for(0.05) + " Call it seventy percent."}])
    out = tmp_path / "balanced.jsonl"
    report = build_dataset(items, ChatExpert(endpoint(server)), out, per_bin=3, concurrency=5, progress=False)
    assert Counter(r["bin"] for r in read_jsonl(out)) == {"bad": 3, "fair": 3, "good": 3}
    processed = report.kept + sum(report.dropped.values())
    assert server.count("expert") == processed == report.this_run["processed"]
    assert processed <= 9 + 1  # at most the one leaking item beyond the targets
    assert (
        report.bins["bad"].untried + report.bins["bad"].kept + sum(report.bins["bad"].dropped.values()) == 8
    )


def test_fatal_status_stops_the_run_and_keeps_progress(server, tmp_path):
    items = make_items(tmp_path / "img", bin_scores(4))
    for item in items:
        server.script(item, "expert", [{"status": 401}])
    out = tmp_path / "fatal.jsonl"
    with pytest.raises(ChatFatalError):
        build_dataset(items, ChatExpert(endpoint(server)), out, per_bin=2, concurrency=2, progress=False)
    assert OutputPaths.for_output(out).report.exists()
    assert server.count("expert") <= 2  # stopped at once, not once per item


def test_repeated_errors_trip_the_breaker(server, tmp_path):
    items = make_items(tmp_path / "img", bin_scores(5))
    for item in items:
        server.script(item, "expert", [{"status": 400}])
    out = tmp_path / "breaker.jsonl"
    with pytest.raises(RuntimeError, match="4 items in a row failed.*HTTP 400"):
        build_dataset(
            items,
            ChatExpert(endpoint(server)),
            out,
            per_bin=5,
            concurrency=1,
            max_consecutive_errors=4,
            progress=False,
        )
    rejects = read_jsonl(OutputPaths.for_output(out).rejects)
    assert len(rejects) == 4 and all(not r["final"] and r["reason"] == "expert_error" for r in rejects)


# ------------------------------------------------------------------------------------- kill / resume


def write_score_file(tmp_path, items):
    path = tmp_path / "scores.jsonl"
    path.write_text("".join(json.dumps({"image": i.image, "score": i.score}) + "\n" for i in items))
    return path


def line_count(path):
    try:
        with open(path, "rb") as handle:
            return handle.read().count(b"\n")
    except FileNotFoundError:
        return 0


def test_kill_midway_then_rerun_has_no_duplicates_and_no_losses(server, tmp_path):
    images = make_items(tmp_path / "img", bin_scores(8))
    data = write_score_file(tmp_path, images)
    items = load_items(str(data), progress=False)  # what the CLI will read
    by_score = {round(i.score, 2): i for i in items}
    # Deterministic drops so the kept set depends on the per-item outcomes, not on timing.
    for score in (0.05, 0.09, 0.13):
        server.script(by_score[score], "expert", [{"text": clean_critique_for(score) + " A solid seven."}])
    for score in (0.45, 0.49, 0.53):
        server.script(by_score[score], "judge", [{"text": ok_verdict(consistent=False)}])
    for score in (0.75, 0.79, 0.83):
        server.script(by_score[score], "judge", [{"text": ok_verdict(errors=["no such tree"])}])
    server.expert_delay = 0.08

    reference = tmp_path / "reference.jsonl"
    build_dataset(
        items,
        ChatExpert(endpoint(server)),
        reference,
        per_bin=5,
        judge=ChatJudge(endpoint(server)),
        concurrency=2,
        progress=False,
    )
    expected = {r["id"] for r in read_jsonl(reference)}
    assert len(expected) == 15

    out = tmp_path / "killed" / "aescot.jsonl"
    command = [
        sys.executable,
        "-m",
        "aesr1.aescot",
        "build",
        "--data",
        str(data),
        "--expert",
        "chat",
        "--base-url",
        server.base_url,
        "--expert-model",
        "fake-vlm",
        "--api-key-env",
        "",
        "--output-dir",
        str(out.parent),
        "--per-bin",
        "5",
        "--concurrency",
        "2",
        "--backoff",
        "0.01",
        "--timeout",
        "5",
        "--no-progress",
        "--extra-body",
        '{"top_k": 20}',
    ]
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while line_count(out) < 5 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert process.poll() is None, process.communicate()[1].decode()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = out.read_bytes()
    survivors = [json.loads(line) for line in before.split(b"\n")[:-1]]
    assert 5 <= len(survivors) < 15

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "complete" in finished.stdout
    records = read_jsonl(out)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == 15  # no duplicates
    assert set(ids) == expected  # nothing lost: the same data as an uninterrupted run
    assert records[: len(survivors)] == survivors  # earlier lines untouched
    assert Counter(r["bin"] for r in records) == {"bad": 5, "fair": 5, "good": 5}
    rejects = [r for r in read_jsonl(OutputPaths.for_output(out).rejects) if r["final"]]
    assert len({r["id"] for r in rejects}) == len(rejects) and not {r["id"] for r in rejects} & set(ids)
    reference_rejects = {r["id"]: r["reason"] for r in read_jsonl(OutputPaths.for_output(reference).rejects)}
    assert {r["id"]: r["reason"] for r in rejects} == reference_rejects
    assert set(reference_rejects.values()) == {"leakage", "inconsistent", "factual_error"}
    report = json.loads(OutputPaths.for_output(out).report.read_text())
    assert report["kept"] == 15 and report["complete"]
    cli_bodies = [r["body"] for r in server.requests if r["body"].get("top_k") == 20]
    assert len(cli_bodies) >= 30 and all(b["model"] == "fake-vlm" for b in cli_bodies)  # expert + judge
