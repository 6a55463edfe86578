"""Load benchmark of the scoring service (`aesr1 serve`): N concurrent clients on loopback against the
running app, against scoring the same images one at a time with the same `Scorer`.

    python benches/bench_serve.py                       # tiny random Qwen2.5-VL, 8 clients, 64 requests
    python benches/bench_serve.py --model DIR --mode expected --clients 16 --requests 256
    python benches/bench_serve.py --smoke --model DIR   # a few requests, seconds (run by the tests)

Each request sends one distinct image. Reported for both forms: wall time, throughput (requests/s)
and p50/p99 latency (the server's from each request's send to its answer, queueing included). The
run fails (exit status 1) unless every request was answered exactly once, with status 200, with the
row of its own image, equal to that image's row scored alone, and the server's metrics count every
image scored once.

Without `--model` the tiny random model (`aesr1.modeling.tiny`) is built and saved to a temporary
folder; it rarely emits an end-of-sequence token, so every completion runs to `--max-new-tokens`: a
fixed amount of work per image.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0-1) by linear interpolation between order statistics."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(latencies: list[float], wall: float) -> dict:
    return {
        "requests": len(latencies),
        "wall_s": wall,
        "throughput_rps": len(latencies) / wall,
        "p50_s": percentile(latencies, 0.5),
        "p99_s": percentile(latencies, 0.99),
        "mean_s": statistics.fmean(latencies),
    }


def make_images(count: int) -> list[bytes]:
    """`count` distinct PNG images (colours and sizes vary, so batches need padding)."""
    from PIL import Image

    images = []
    for i in range(count):
        size = (56 + 14 * (i % 3), 56 + 14 * ((i // 3) % 3))
        colour = ((37 * i) % 256, (91 * i + 60) % 256, (53 * i + 120) % 256)
        buffer = io.BytesIO()
        Image.new("RGB", size, colour).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def tiny_model_dir(folder: str) -> str:
    from aesr1.modeling.tiny import build_tiny_model

    model, processor = build_tiny_model(seed=0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def sequential(scorer, images: list[bytes]) -> tuple[dict, list[dict]]:
    """Each image scored alone, one after another: the baseline."""
    from PIL import Image

    latencies, rows = [], []
    start = time.perf_counter()
    for i, data in enumerate(images):
        t0 = time.perf_counter()
        with Image.open(io.BytesIO(data)) as image:
            result = scorer([image])[0]
        latencies.append(time.perf_counter() - t0)
        rows.append({**result.to_dict(), "image": f"req-{i}.png"})
    return summarise(latencies, time.perf_counter() - start), rows


def start_server(app):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    return server, thread, sock.getsockname()[1]


async def load(url: str, images: list[bytes], clients: int, timeout: float) -> tuple[dict, dict, list]:
    """`clients` concurrent clients take request ids from one queue until it is empty; returns the
    summary, the answers per request id, and the failures."""
    import httpx

    todo: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(images)):
        todo.put_nowait(i)
    answers: dict[int, list[dict]] = {i: [] for i in range(len(images))}
    latencies: list[float] = []
    failures: list[str] = []

    async def client(http: httpx.AsyncClient) -> None:
        while True:
            try:
                i = todo.get_nowait()
            except asyncio.QueueEmpty:
                return
            t0 = time.perf_counter()
            response = await http.post(url, files={"image": (f"req-{i}.png", images[i], "image/png")})
            latencies.append(time.perf_counter() - t0)
            if response.status_code != 200:
                failures.append(f"request {i}: {response.status_code} {response.text[:200]}")
                continue
            answers[i].extend(response.json()["results"])

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - start
    return summarise(latencies, wall), answers, failures


def metric_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def rows_match(got: dict, want: dict) -> bool:
    """Equal rows; expected mode's floats to 1e-6 (padded batched matmuls round differently)."""
    if got.keys() != want.keys():
        return False
    for key, value in got.items():
        other = want[key]
        if isinstance(value, float) and isinstance(other, float):
            if abs(value - other) > 1e-6:
                return False
        elif key == "distribution" and value is not None and other is not None:
            if value.keys() != other.keys() or any(abs(value[k] - other[k]) > 1e-6 for k in value):
                return False
        elif value != other:
            return False
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model directory (default: the tiny random model, built here)")
    parser.add_argument("--mode", default="greedy", choices=["greedy", "sample", "expected"])
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per-request timeout, seconds")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--smoke", action="store_true", help="2 clients, 6 requests, 8 new tokens")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.clients, args.requests, args.max_new_tokens = 2, 6, 8
    import httpx
    import torch

    from aesr1.score import Scorer
    from aesr1.serve import ServeConfig, create_app

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        model = args.model or tiny_model_dir(folder)
        scorer = Scorer(model, mode=args.mode, max_new_tokens=args.max_new_tokens, device="cpu",
                        batch_size=args.max_batch_size)  # fmt: skip
        images = make_images(args.requests)
        from PIL import Image

        scorer([Image.new("RGB", (60, 60), (1, 2, 3))])  # warm-up: first-call costs out of both timings
        baseline, expected_rows = sequential(scorer, images)
        config = ServeConfig(
            max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
            max_queue=max(64, args.requests), timeout_s=args.timeout,
        )  # fmt: skip
        app = create_app(scorer, config)
        server, thread, port = start_server(app)
        try:
            served, answers, failures = asyncio.run(
                load(f"http://127.0.0.1:{port}/v1/score", images, args.clients, args.timeout)
            )
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        finally:
            server.should_exit = True
            thread.join(60)
    torch.set_num_threads(previous_threads)

    duplicates = sum(len(rows) > 1 for rows in answers.values())
    missing = sum(len(rows) == 0 for rows in answers.values())
    matches = all(len(rows) == 1 and rows_match(rows[0], expected_rows[i]) for i, rows in answers.items())
    batches = metric_value(metrics, "aesr1_serve_batch_size_count")
    served.update(
        clients=args.clients,
        answered=sum(len(rows) for rows in answers.values()),
        duplicates=duplicates,
        missing=missing,
        failures=failures,
        matches_sequential=matches,
        scored_images=int(metric_value(metrics, "aesr1_serve_batch_size_sum")),
        batches=int(batches),
        mean_batch_size=metric_value(metrics, "aesr1_serve_batch_size_sum") / max(batches, 1),
        answered_200=int(
            metric_value(metrics, 'aesr1_serve_requests_total{endpoint="/v1/score",status="200"}')
        ),
    )
    report = {
        "workload": {
            "requests": args.requests, "clients": args.clients, "mode": args.mode,
            "max_new_tokens": args.max_new_tokens, "max_batch_size": args.max_batch_size,
            "max_wait_ms": args.max_wait_ms, "torch_threads": args.threads,
            "model": args.model or "tiny random Qwen2.5-VL (aesr1.modeling.tiny, seed 0)",
        },
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "sequential": baseline,
        "server": served,
        "speedup": served["throughput_rps"] / baseline["throughput_rps"],
    }  # fmt: skip
    print(f"{'form':<28} {'requests':>8} {'wall s':>8} {'req/s':>8} {'p50 s':>8} {'p99 s':>8}")
    for name, row in (("sequential, one image", baseline), (f"server, {args.clients} clients", served)):
        print(f"{name:<28} {row['requests']:>8} {row['wall_s']:>8.2f} {row['throughput_rps']:>8.2f} "
              f"{row['p50_s']:>8.3f} {row['p99_s']:>8.3f}")  # fmt: skip
    print(f"throughput x{report['speedup']:.2f}; {served['batches']} model calls, mean batch "
          f"{served['mean_batch_size']:.2f}; answered {served['answered']}/{args.requests}, duplicates "
          f"{duplicates}, missing {missing}, rows equal to sequential: {matches}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    ok = (
        not failures and not duplicates and not missing and matches
        and served["scored_images"] == args.requests and served["answered_200"] == args.requests
    )  # fmt: skip
    if not ok:
        print("FAILED: not every request was answered exactly once with its own row", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
