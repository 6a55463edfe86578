"""`python -m aesr1.score ... --output-dir DIR` with a scripted predictor instead of a model, for the bulk
scoring tests: run it as one process of a launch (RANK/WORLD_SIZE/LOCAL_RANK in the environment).

The answer to an image depends only on its first pixel: "<answer>{(r + g + b) % 101 / 100}</answer>",
or an unparseable one when r is a multiple of 10. Each image the predictor is given is appended to
$SCORE_BULK_LOG.<rank> (when set), so a test can tell which images a run computed; each predictor
call sleeps $SCORE_BULK_DELAY seconds (default 0), so a test can kill a run midway.

The worker never imports torch or transformers: the image-size check is replaced by the same
aspect-ratio rule, since importing transformers' Qwen2-VL image processor for it costs each process
several seconds, more than these tests' scoring.

    RANK=0 WORLD_SIZE=2 python tests/workers/score_bulk_worker.py images/ --model x --output-dir out
"""

from __future__ import annotations

import os
import sys
import time


def size_problem(image) -> str | None:
    width, height = image.size
    if min(width, height) < 1 or max(width, height) / min(width, height) > 200:
        return f"the model's image processor rejects its size {width}x{height}"
    return None


def answer(image) -> str:
    r, g, b = image.getpixel((0, 0))
    if r % 10 == 0:
        return "<think>no idea</think>"
    return f"<think>colour {r} {g} {b}</think><answer>{(r + g + b) % 101 / 100:.2f}</answer>"


class Scripted:
    def __init__(self, log: str | None, delay: float):
        self.log, self.delay = log, delay

    def __call__(self, images, num_samples):
        if self.log:
            with open(self.log, "a", encoding="utf-8") as handle:
                handle.writelines(image.info["path"] + "\n" for image in images)
        time.sleep(self.delay)
        return [[answer(image)] * num_samples for image in images]


def make_scorer(args, launch):
    from aesr1.score import Scorer

    log = os.environ.get("SCORE_BULK_LOG")
    scripted = Scripted(log and f"{log}.{launch.rank}", float(os.environ.get("SCORE_BULK_DELAY", "0")))
    return Scorer(
        predictor=scripted, mode=args.mode, preset=args.preset, scale=args.scale, num_samples=args.samples,
        temperature=args.temperature, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        seed=args.seed,
    )  # fmt: skip


def main(argv: list[str]) -> int:
    import aesr1.data.images

    aesr1.data.images.size_problem = size_problem
    from aesr1.score import bulk
    from aesr1.score.__main__ import build_parser

    status = bulk.run(build_parser().parse_args(argv), make_scorer)
    assert "torch" not in sys.modules, "the scripted bulk worker imported torch"
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
