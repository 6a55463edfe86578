"""The three score modes on the embedded default's held-out images: PLCC, SRCC, MAE, parse failures
and seconds per image.

    python -m aesr1.train                                  # first: the embedded default's run
    python benches/bench_score_modes.py                    # runs/aesr1-embedded, the RAPO model
    python benches/bench_score_modes.py --run-dir DIR --stage sft --limit 100 --rows modes.jsonl

The held-out images are the run's own (its config.json and data split); each mode scores all of them
with `aesr1.Scorer` on the CPU (batch 8; sample mode: 4 samples at T = 1, the RAPO rollout
settings). A mode's row is appended to `--rows` as soon as it is measured, and a rerun skips the
modes already there. MAE is on the native [0, 1] scale over the images that got a score.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def held_out(run_dir: Path):
    from aesr1.train.config import load_config
    from aesr1.train.data import load_items

    config = load_config(run_dir / "config.json")
    return load_items(config, run_dir)[1]


def measure(model_dir: Path, mode: str, items, batch_size: int, threads: int | None) -> dict:
    import torch

    from aesr1.metrics import evaluate
    from aesr1.score import Scorer

    if threads:
        torch.set_num_threads(threads)
    scorer = Scorer(model_dir, mode=mode, device="cpu", batch_size=batch_size)
    start = time.perf_counter()
    results = scorer([item.image for item in items], progress=True)
    seconds = time.perf_counter() - start
    pred = np.array([np.nan if r.score is None else r.score for r in results], dtype=np.float64)
    gt = np.array([item.score for item in items], dtype=np.float64)
    scored = ~np.isnan(pred)
    metrics = evaluate(pred, gt, nan_policy="omit")
    stds = [r.std for r in results if r.std is not None]
    return {
        "mode": mode,
        "images": len(items),
        "scored": int(scored.sum()),
        "plcc": metrics.plcc,
        "srcc": metrics.srcc,
        "mae": float(np.mean(np.abs(pred[scored] - gt[scored]))),
        "parse_failures": sum(r.parse_failures for r in results),
        "completions": sum(len(r.completions) for r in results),
        "mean_std": float(np.mean(stds)) if stds else None,
        "distinct_scores": len({round(float(p), 6) for p in pred[scored]}),
        "seconds_per_image": seconds / len(items),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", default="runs/aesr1-embedded", type=Path)
    parser.add_argument("--stage", default="rapo", choices=["sft", "rapo"])
    parser.add_argument("--modes", default="greedy,sample,expected")
    parser.add_argument("--limit", type=int, help="only the first N held-out images")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--rows", type=Path, help="append each mode's row here; skip modes already in it")
    args = parser.parse_args()

    items = held_out(args.run_dir)[: args.limit]
    done = {}
    if args.rows and args.rows.exists():
        for line in args.rows.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["mode"]] = row
    rows = []
    for mode in args.modes.split(","):
        row = done.get(mode) or measure(
            args.run_dir / args.stage / "final", mode, items, args.batch_size, args.threads
        )
        if mode not in done and args.rows:
            with args.rows.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
        rows.append(row)
    import platform

    print(
        f"\n{args.stage} model of {args.run_dir}, {len(items)} held-out images, CPU: {platform.processor() or platform.machine()}"
    )
    print("| mode | PLCC | SRCC | MAE | mean std | distinct scores | parse failures | s / image |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        std = "—" if row["mean_std"] is None else f"{row['mean_std']:.3f}"
        print(
            f"| {row['mode']} | {row['plcc']:.4f} | {row['srcc']:.4f} | {row['mae']:.4f} | {std} | "
            f"{row['distinct_scores']} | {row['parse_failures']}/{row['completions']} | "
            f"{row['seconds_per_image']:.3f} |"
        )


if __name__ == "__main__":
    main()
