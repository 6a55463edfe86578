"""`aesr1.Scorer`: the critique and the aesthetic score of images from a model, in Python.

    scorer = Scorer("path/to/model")            # or Scorer(model, processor)
    for result in scorer(["a.jpg", "photos/"]):
        print(result.score, result.critique)

Same prompt, batching, parsing and failure accounting as `python -m aesr1.eval`; the command line is
`python -m aesr1.score <images or folders> --model <dir>`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aesr1.data.images import ImageError, model_image
from aesr1.eval.aggregate import mean_scores, parsed_scores
from aesr1.eval.predictor import ModelPredictor, Predictor, check_generation, check_predictions

#: File suffixes taken from folders.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


# Model text is untrusted, so the tags are found with str.find, linear in the text: the lazy
# regexes `<think>(.*?)</think>` and `<answer>.*?</answer>` rescan the rest of the text from every
# unclosed opening tag, quadratic on text such as "<think>" * n.


def _without_blocks(text: str, open_tag: str, close_tag: str) -> str:
    """`text` without its ``open_tag…close_tag`` blocks (leftmost first, not nested), as
    ``re.sub(open_tag + ".*?" + close_tag, "", text, flags=re.DOTALL)`` removes them."""
    pieces, position = [], 0
    while (start := text.find(open_tag, position)) >= 0:
        end = text.find(close_tag, start + len(open_tag))
        if end < 0:  # no later opening tag has a closing one either
            break
        pieces.append(text[position:start])
        position = end + len(close_tag)
    pieces.append(text[position:])
    return "".join(pieces)


def critique_of(completion: str) -> str:
    """The reasoning of a completion: the content of its first ``<think>…</think>`` block (from the
    first ``<think>`` to the next ``</think>``), else the text without ``<answer>…</answer>``
    blocks and ``<think>`` tags. Linear in the length of the text."""
    start = completion.find("<think>")
    if start >= 0:
        end = completion.find("</think>", start + len("<think>"))
        if end >= 0:
            return completion[start + len("<think>") : end].strip()
    return _without_blocks(completion, "<answer>", "</answer>").replace("<think>", "").strip()


@dataclass
class ScoreResult:
    """One image's score.

    Attributes:
        image: path (or "<PIL image i>" for in-memory images).
        score: mean of the parseable sampled scores on [0, 1]; None when none parsed or the image failed.
        critique: the reasoning of the first parseable completion (else of the first completion).
        completions: all sampled completions; scores: their parsed scores (None = unparseable).
        error: why the image was not given to the model, else None: an unreadable file, not a
            regular file, over PIL's decompression-bomb limit, empty, or a size the image processor
            rejects (aspect ratio over 200). Such an image has score None and no completions.
    """

    image: str
    score: float | None
    critique: str
    completions: list[str] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    error: str | None = None

    @property
    def parse_failures(self) -> int:
        return sum(score is None for score in self.scores)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["parse_failures"] = self.parse_failures
        return data


def expand_images(inputs: str | os.PathLike | Iterable[Any], recursive: bool = False) -> list[Any]:
    """Paths and PIL images; a folder expands to its regular image files (sorted), a missing path
    raises FileNotFoundError naming it. A path given explicitly is kept even when it is not a regular
    file: scoring then reports it instead of reading it."""
    if isinstance(inputs, (str, os.PathLike)) or hasattr(inputs, "convert"):
        inputs = [inputs]
    expanded: list[Any] = []
    for index, entry in enumerate(inputs):
        if hasattr(entry, "convert"):  # PIL image
            expanded.append(entry)
            continue
        if not isinstance(entry, (str, os.PathLike)):
            raise TypeError(f"images[{index}] must be a path or a PIL image, got {type(entry).__name__}")
        path = Path(entry).expanduser()
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            files = sorted(
                p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            expanded.extend(str(p) for p in files)
        elif path.exists():
            expanded.append(str(path))
        else:
            raise FileNotFoundError(f"image or folder {str(path)!r} not found")
    return expanded


def _name(entry: Any, position: int) -> str:
    return entry if isinstance(entry, str) else f"<PIL image {position}>"


def summary(results: Sequence[ScoreResult]) -> dict[str, int]:
    """Counts: images, scored, unreadable (not given to the model: `ScoreResult.error`), completions
    and parse failures."""
    return {
        "images": len(results),
        "scored": sum(r.score is not None for r in results),
        "unreadable": sum(r.error is not None for r in results),
        "completions": sum(len(r.completions) for r in results),
        "parse_failures": sum(r.parse_failures for r in results),
    }


class Scorer:
    """Scores images with a vision-language model: critique and score per image, batched.

    A bad image never raises, also when it is the only one: its result carries `error` (and score
    None) and the other images are scored. Bad arguments raise ValueError/TypeError before a model
    loads; a missing path raises FileNotFoundError.

    Args:
        model: a local model directory, or a loaded model (then give `processor`).
        processor: the model's processor when `model` is an object.
        num_samples: completions per image; the score is the mean of the parseable ones.
        temperature: 0 decodes greedily (default); > 0 samples.
        top_p, max_new_tokens, seed: generation settings (Appendix C caps completions at 1024 tokens).
        batch_size: images per `generate` call.
        device, dtype: where and how to load a model directory ("auto": CUDA when available).
        predictor: a callable `(images, num_samples) -> completions` used instead of a model.
    """

    def __init__(
        self,
        model: str | os.PathLike | Any = None,
        processor: Any = None,
        *,
        num_samples: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_new_tokens: int = 1024,
        batch_size: int = 8,
        seed: int = 0,
        device: str = "auto",
        dtype: str | None = None,
        predictor: Predictor | None = None,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        check_generation(
            temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, num_samples=num_samples
        )
        self.num_samples, self.batch_size = num_samples, batch_size
        settings = dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
        if predictor is not None:
            self.predictor = predictor
        elif isinstance(model, (str, os.PathLike)):
            self.predictor = ModelPredictor.from_pretrained(
                str(model), device=device, dtype=dtype, **settings
            )
        elif model is not None:
            if processor is None:
                raise TypeError("processor must be given with a model object (or pass a model directory)")
            self.predictor = ModelPredictor(model, processor, **settings)
        else:
            raise TypeError("model must be a model directory or a model object (or give predictor=)")

    def score(
        self, images: str | os.PathLike | Iterable[Any], *, recursive: bool = False, progress: bool = False
    ) -> list[ScoreResult]:
        """Critique and score of each image (paths, folders or PIL images), in input order; an image
        that cannot be given to the model gets `error` set instead of raising."""
        entries = expand_images(images, recursive)
        results: list[ScoreResult | None] = [None] * len(entries)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(entries), desc="score", unit="img")
        for start in range(0, len(entries), self.batch_size):
            opened, positions = [], []
            for position in range(start, min(start + self.batch_size, len(entries))):
                entry = entries[position]
                try:
                    opened.append(model_image(entry, _name(entry, position)))
                    positions.append(position)
                except ImageError as error:
                    results[position] = ScoreResult(_name(entry, position), None, "", error=error.reason)
            if opened:
                if hasattr(self.predictor, "key"):
                    self.predictor.key = f"score/{start}"
                completions = check_predictions(
                    self.predictor(opened, self.num_samples), len(opened), self.num_samples
                )
                parsed = parsed_scores(completions)
                means = mean_scores(parsed)
                for position, samples, row, mean in zip(positions, completions, parsed, means, strict=True):
                    scores = [None if np.isnan(v) else float(v) for v in row]
                    first_ok = next((i for i, v in enumerate(scores) if v is not None), 0)
                    results[position] = ScoreResult(
                        image=_name(entries[position], position),
                        score=None if np.isnan(mean) else float(mean),
                        critique=critique_of(samples[first_ok]),
                        completions=samples,
                        scores=scores,
                    )
            if bar is not None:
                bar.update(min(self.batch_size, len(entries) - start))
        if bar is not None:
            bar.close()
        return [r for r in results if r is not None]

    __call__ = score


__all__ = ["IMAGE_SUFFIXES", "ScoreResult", "Scorer", "critique_of", "expand_images", "summary"]
