"""`aesr1.Scorer`: the critique and the aesthetic score of images from a model, in Python.

    scorer = Scorer("path/to/model", mode="expected", scale="1-10")   # or Scorer(model, processor)
    for result in scorer(["a.jpg", "photos/"]):
        print(result.score, result.std, result.scale.name, result.critique)

Score modes (`greedy`, `sample`, `expected`) are described in `aesr1.score.modes`, scales in
`aesr1.score.scales`, prompt presets of released checkpoints in `aesr1.score.presets`, comparisons
and rankings in `aesr1.score.compare` and `aesr1.score.ranking`. Same prompt, modes, parsing and
failure accounting as `aesr1 eval`; the command line is `aesr1 score <images or folders> --model <dir>`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aesr1.data.images import ImageError, model_image
from aesr1.eval.predictor import ModelPredictor, Predictor
from aesr1.score.modes import ImagePrediction, ModeRunner, ModeSettings, image_key
from aesr1.score.provenance import model_revision, prompt_sha256
from aesr1.score.scales import UNIT, Scale

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
        score: the mode's score on `scale`: the greedy answer, the mean of the parseable samples, or
            the expected answer; None when nothing parsed or the image failed.
        critique: the reasoning of the first parseable completion (else of the first completion).
        completions: the generated completions; scores: their parsed answers on `scale` (None =
            unparseable).
        error: why the image was not given to the model, else None: an unreadable file, not a
            regular file, over PIL's decompression-bomb limit, empty, or a size the image processor
            rejects (aspect ratio over 200). Such an image has score None and no completions.
        std: uncertainty on `scale`: std of the samples (sample mode) or of the answer distribution
            (expected mode); None for greedy.
        median: median of the parseable samples (sample mode).
        mode: "greedy", "sample" or "expected".
        scale: the scale of `score`, `std`, `median` and `scores`.
        distribution: expected mode: probability of each answer string (as the model writes it,
            on the preset's answer scale).
        model, revision: the model directory and `aesr1.score.provenance.model_revision` of it.
        preset, prompt_sha256: the prompt preset and the hash of its prompt.
        note: why `score` is None for an image that was read (no answer parsed, no answer tag).
    """

    image: str
    score: float | None
    critique: str
    completions: list[str] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    error: str | None = None
    std: float | None = None
    median: float | None = None
    mode: str = "greedy"
    scale: Scale = UNIT
    distribution: dict[str, float] | None = None
    model: str | None = None
    revision: str | None = None
    preset: str = "aesr1"
    prompt_sha256: str | None = None
    note: str | None = None

    @property
    def parse_failures(self) -> int:
        return sum(score is None for score in self.scores)

    def to_dict(self) -> dict:
        """The JSON row: every number comes with the scale it is on."""
        return {
            "image": self.image,
            "score": self.score,
            "std": self.std,
            "median": self.median,
            "scale": self.scale.name,
            "mode": self.mode,
            "samples": len(self.completions),
            "parse_failures": self.parse_failures,
            "critique": self.critique,
            "model": self.model,
            "revision": self.revision,
            "preset": self.preset,
            "prompt_sha256": self.prompt_sha256,
            "error": self.error,
            "note": self.note,
            "completions": self.completions,
            "scores": self.scores,
            "distribution": self.distribution,
        }


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


def resolve_settings(
    mode: str | None = None,
    preset: str | Any = "aesr1",
    scale: str | Scale | None = None,
    *,
    num_samples: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_new_tokens: int | None = None,
    seed: int = 0,
) -> tuple[Any, Scale, ModeSettings]:
    """The preset, scale and mode settings a `Scorer` with these arguments scores with, checked
    (ValueError) without loading a model."""
    from aesr1.score.presets import get_preset

    preset = get_preset(preset)
    scale = preset.scale if scale is None else Scale.parse(scale)
    settings = ModeSettings.resolve(
        mode, num_samples=num_samples, temperature=temperature, top_p=top_p,
        max_new_tokens=preset.max_new_tokens if max_new_tokens is None else max_new_tokens,
        seed=seed, preset=preset,
    )  # fmt: skip
    if preset.system_prompt is not None:
        raise ValueError(
            f"preset {preset.name!r} has a system prompt, which the scoring chat builder does not send"
        )
    return preset, scale, settings


class Scorer:
    """Scores images with a vision-language model: critique, score and uncertainty per image.

    A bad image never raises, also when it is the only one: its result carries `error` (and score
    None) and the other images are scored. Bad arguments raise ValueError/TypeError before a model
    loads; a missing path raises FileNotFoundError.

    Args:
        model: a local model directory, or a loaded model (then give `processor`).
        processor: the model's processor when `model` is an object.
        mode: "greedy", "sample" or "expected" (`aesr1.score.modes`); default: "sample" when
            `temperature` > 0 or `num_samples` > 1, else "greedy".
        preset: prompt, answer parser and answer scale (`aesr1.score.presets`, default "aesr1").
        scale: the scale of the results, "lo-hi" (default: the preset's answer scale, 0-1 for
            "aesr1"); scores map linearly from the native [0, 1].
        num_samples, temperature, top_p: sample mode settings (default: the RAPO rollout's).
        max_new_tokens: completion cap (default: the preset's; Appendix C: 1024).
        batch_size: images per `generate` call (greedy and expected modes).
        seed: with each image's pixels, the seed of its samples.
        device, dtype: where and how to load a model directory ("auto": CUDA when available).
        predictor: a callable `(images, num_samples) -> completions` used instead of a model
            (greedy and sample modes).
    """

    def __init__(
        self,
        model: str | os.PathLike | Any = None,
        processor: Any = None,
        *,
        mode: str | None = None,
        preset: str | Any = "aesr1",
        scale: str | Scale | None = None,
        num_samples: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        batch_size: int = 8,
        seed: int = 0,
        device: str = "auto",
        dtype: str | None = None,
        predictor: Predictor | None = None,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.preset, self.scale, self.settings = resolve_settings(
            mode, preset, scale, num_samples=num_samples, temperature=temperature, top_p=top_p,
            max_new_tokens=max_new_tokens, seed=seed,
        )  # fmt: skip
        if self.settings.mode == "expected" and predictor is not None:
            raise ValueError(
                "mode 'expected' reads the model's digit probabilities: give a model, not a predictor"
            )
        self.batch_size = batch_size
        self.num_samples = self.settings.num_samples
        self.model_path: str | None = None
        generation = dict(
            temperature=self.settings.temperature, top_p=self.settings.top_p,
            max_new_tokens=self.settings.max_new_tokens, seed=seed, prompt=self.preset.prompt,
        )  # fmt: skip
        if predictor is not None:
            self.predictor = predictor
        elif isinstance(model, (str, os.PathLike)):
            self.model_path = str(model)
            self.predictor = ModelPredictor.from_pretrained(
                str(model), device=device, dtype=dtype, **generation
            )
        elif model is not None:
            if processor is None:
                raise TypeError("processor must be given with a model object (or pass a model directory)")
            self.predictor = ModelPredictor(model, processor, **generation)
        else:
            raise TypeError("model must be a model directory or a model object (or give predictor=)")
        self.runner = ModeRunner(
            self.settings, self.predictor, self.preset,
            model=getattr(self.predictor, "model", None), processor=getattr(self.predictor, "processor", None),
        )  # fmt: skip
        self.revision = model_revision(self.model_path)
        self.prompt_sha256 = prompt_sha256(self.preset.prompt, self.preset.system_prompt)

    @property
    def mode(self) -> str:
        return self.settings.mode

    def _result(self, name: str, prediction: ImagePrediction) -> ScoreResult:
        to_scale, spread = self.scale.from_unit, self.scale.spread_from_unit
        scores = [to_scale(value) for value in prediction.scores]
        first_ok = next((i for i, v in enumerate(scores) if v is not None), 0)
        return ScoreResult(
            image=name,
            score=to_scale(prediction.score),
            critique=critique_of(prediction.completions[first_ok]) if prediction.completions else "",
            completions=prediction.completions,
            scores=scores,
            std=spread(prediction.std),
            median=to_scale(prediction.median),
            note=prediction.note,
            distribution=prediction.distribution,
            **self._provenance(),
        )

    def _provenance(self) -> dict[str, Any]:
        return dict(
            mode=self.mode, scale=self.scale, model=self.model_path, revision=self.revision,
            preset=self.preset.name, prompt_sha256=self.prompt_sha256,
        )  # fmt: skip

    def score(
        self, images: str | os.PathLike | Iterable[Any], *, recursive: bool = False, progress: bool = False
    ) -> list[ScoreResult]:
        """Critique and score of each image (paths, folders or PIL images), in input order; an image
        that cannot be given to the model gets `error` set instead of raising."""
        entries = expand_images(images, recursive)
        results: list[ScoreResult] = []
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(entries), desc=f"score ({self.mode})", unit="img")
        for start in range(0, len(entries), self.batch_size):
            positions = range(start, min(start + self.batch_size, len(entries)))
            batch = [entries[position] for position in positions]
            results += self.score_batch(batch, [_name(entries[p], p) for p in positions])
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
        return results

    __call__ = score

    def score_batch(self, entries: Sequence[Any], names: Sequence[str]) -> list[ScoreResult]:
        """The results of one batch, in order, named by `names`: each entry is a path, a PIL image,
        or a function of no arguments returning one (an image read on demand, which may raise
        `aesr1.data.images.ImageError`). The readable images go to the model together."""
        if len(entries) != len(names):
            raise ValueError(f"{len(entries)} images but {len(names)} names")
        results: list[ScoreResult | None] = [None] * len(entries)
        opened, positions = [], []
        for position, (entry, name) in enumerate(zip(entries, names, strict=True)):
            try:
                opened.append(model_image(entry() if callable(entry) else entry, name))
                positions.append(position)
            except ImageError as error:
                results[position] = ScoreResult(name, None, "", error=error.reason, **self._provenance())
        predictions = self.runner(opened, [image_key(image) for image in opened])
        for position, prediction in zip(positions, predictions, strict=True):
            results[position] = self._result(names[position], prediction)
        return [r for r in results if r is not None]


__all__ = [
    "IMAGE_SUFFIXES", "Scale", "ScoreResult", "Scorer", "critique_of", "expand_images",
    "resolve_settings", "summary",
]  # fmt: skip
