"""`run_evaluation`: load datasets, generate (resuming from the cache), score, tabulate, plot."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aesr1.data.images import ImageError, model_image
from aesr1.data.records import ScoredImage
from aesr1.data.registry import canonical_name, display_name, parse_data_spec
from aesr1.data.report import LoadedDataset
from aesr1.eval.cache import Prediction, PredictionCache
from aesr1.eval.config import EvalConfig
from aesr1.eval.correlation import correlations
from aesr1.eval.predictor import ModelPredictor, Predictor, resolve_device
from aesr1.eval.results import DatasetResult, EvalResult
from aesr1.eval.table import report_markdown
from aesr1.jsonio import check_writable, naming, write_json, write_text
from aesr1.score.modes import ModeRunner, image_key
from aesr1.score.presets import get_preset

logger = logging.getLogger(__name__)

CACHE_FILE = "predictions.jsonl"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
SKIPPED_JSON = "skipped.json"


def _names(label: str, items: Sequence[ScoredImage]) -> tuple[str, str]:
    try:
        name = canonical_name(label)
    except ValueError:
        name = items[0].source if items else label
    try:
        title = display_name(name)
    except ValueError:
        title = name
    return name, title


def load_eval_datasets(config: EvalConfig) -> dict[str, Sequence[ScoredImage]]:
    if not config.data:
        raise ValueError("data: give the datasets to evaluate (e.g. 'ava:/data/AVA,para:/data/PARA')")
    return {
        spec.label: spec.load(config.split, seed=config.seed, check_images=config.check_images)
        for spec in parse_data_spec(config.data)
    }


def _batches(items: Sequence[Any], size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _generate_dataset(
    label: str,
    items: Sequence[ScoredImage],
    cache: PredictionCache,
    runner: ModeRunner,
    config: EvalConfig,
    progress: bool,
) -> list[tuple[str, str]]:
    """Predicts the items not in the cache; returns (path, reason) of the images that could not be
    given to the model (unreadable, or a size the image processor rejects)."""
    todo = [item for item in items if (label, item.id) not in cache]
    cached = len(items) - len(todo)
    logger.info(
        "%s: %d images, %d cached, %d to predict (%s)", label, len(items), cached, len(todo), config.mode
    )
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), initial=cached, desc=f"eval {label}", unit="img")
    unreadable: list[tuple[str, str]] = []
    for batch in _batches(todo, config.batch_size):
        images, kept = [], []
        for item in batch:
            try:
                images.append(model_image(item.image))
                kept.append(item)
            except ImageError as error:  # one bad file never stops the run
                logger.warning("%s: skipped: %s", item.image, error.reason)
                unreadable.append((item.image, error.reason))
        predictions = runner(images, [image_key(image) for image in images])
        cache.add(
            Prediction(label, item.id, item.image, float(item.score), p.completions, p.scores, p.score, p.std)
            for item, p in zip(kept, predictions, strict=True)
        )
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return unreadable


def summarise(
    label: str,
    items: Sequence[ScoredImage],
    cache: PredictionCache,
    unreadable: Sequence[tuple[str, str]] = (),
) -> tuple[DatasetResult, np.ndarray, np.ndarray]:
    """The dataset's counts and correlations from the cached predictions; also returns the (pred, gt)
    arrays of the scored images for plotting."""
    name, title = _names(label, items)
    records = [cache.get((label, item.id)) for item in items]
    records = [r for r in records if r is not None]
    scored = [r for r in records if r.pred is not None]
    pred = np.array([r.pred for r in scored], dtype=np.float64)
    gt = np.array([r.gt for r in scored], dtype=np.float64)
    stats = correlations(pred, gt, label)
    report = getattr(items, "report", None)
    result = DatasetResult(
        label=label,
        name=name,
        title=title,
        images=len(items),
        scored=len(scored),
        completions=sum(len(r.completions) for r in records),
        parse_failures=sum(r.parse_failures for r in records),
        unscored=len(records) - len(scored),
        skipped_at_load=report.skipped if report is not None else 0,
        unreadable_at_eval=len(unreadable),
        plcc=stats.plcc,
        srcc=stats.srcc,
        krcc=stats.krcc,
        plcc_logistic=stats.plcc_logistic,
        logistic_params=stats.logistic_params,
        note=stats.note,
    )
    if result.unscored:
        logger.warning(
            "%s: %d of %d images had no parseable score (%d of %d completions failed to parse)",
            label, result.unscored, len(records), result.parse_failures, result.completions,
        )  # fmt: skip
    return result, pred, gt


def _save_plots(output: Path, label: str, title: str, pred, gt_all, gt, params) -> None:
    from aesr1.eval.plots import plot_distributions, plot_scatter

    folder = output / "plots"
    with naming(folder):
        folder.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
    path = folder / f"{safe}_distribution.png"
    with naming(path):
        plot_distributions(pred, gt_all, f"{title}: score distributions", path)
    path = folder / f"{safe}_scatter.png"
    with naming(path):
        plot_scatter(pred, gt, f"{title}: prediction vs ground truth", path, params)


def run_evaluation(
    config: EvalConfig,
    *,
    datasets: Mapping[str, Sequence[ScoredImage]] | None = None,
    predictor: Predictor | None = None,
    progress: bool = True,
) -> EvalResult:
    """Evaluates a model (or an injected `predictor`) on datasets and saves results.json, results.md,
    skipped.json and plots under `config.output_dir`.

    Predictions are appended to ``output_dir/predictions.jsonl`` after every batch; a rerun with the
    same settings skips the images already there (resume after a kill). `datasets` ({label: records})
    replaces loading `config.data`; `predictor(images, num_samples) -> completions` replaces the model
    (greedy and sample modes). Each image is predicted in `config.mode` (`aesr1.score.modes`).

    An image that cannot be read or that the image processor would reject is skipped, logged and
    listed in skipped.json; the others are evaluated. Settings, the model directory, the device and
    a writable output folder are checked before any dataset or model loads; a failed write raises
    OSError naming the file, and a rerun resumes from the predictions already saved.
    """
    if not isinstance(config, EvalConfig):
        raise TypeError(f"config must be an EvalConfig, got {type(config).__name__}")
    if predictor is None:
        if not config.model:
            raise ValueError("model: give a model directory (or inject a predictor)")
        from aesr1.modeling.loading import is_model_dir

        if not is_model_dir(config.model):  # fail before the datasets' image checks
            raise FileNotFoundError(
                f"model: {config.model!r} is not a model directory (no config.json or adapter_config.json)"
            )
        resolve_device(config.device)
    output = check_writable(config.output_dir)
    loaded = dict(datasets) if datasets is not None else load_eval_datasets(config)
    if not loaded:
        raise ValueError("datasets: nothing to evaluate")
    if config.limit is not None:
        loaded = {
            label: LoadedDataset(items[: config.limit], report=getattr(items, "report", None))
            for label, items in loaded.items()
        }
    preset = get_preset(config.preset)
    if predictor is None:
        predictor = ModelPredictor.from_pretrained(
            config.model,
            device=config.device,
            dtype=config.dtype,
            temperature=config.temperature,
            top_p=config.top_p,
            max_new_tokens=config.max_new_tokens,
            seed=config.seed,
            prompt=preset.prompt,
        )
    runner = ModeRunner(
        config.settings, predictor, preset,
        model=getattr(predictor, "model", None), processor=getattr(predictor, "processor", None),
    )  # fmt: skip
    cache = PredictionCache(output / CACHE_FILE, config.generation_fingerprint(), overwrite=config.overwrite)

    results: dict[str, DatasetResult] = {}
    skipped: dict[str, Any] = {}
    for label, items in loaded.items():
        unreadable = _generate_dataset(label, items, cache, runner, config, progress)
        result, pred, gt = summarise(label, items, cache, unreadable)
        results[label] = result
        report = getattr(items, "report", None)
        skipped[label] = {
            "load": {"missing": report.missing, "unreadable": report.unreadable} if report else None,
            "eval": unreadable,
        }
        if config.plots:
            gt_all = np.array([item.score for item in items], dtype=np.float64)
            _save_plots(output, label, result.title, pred, gt_all, gt, result.logistic_params)

    evaluation = EvalResult(
        model=config.model_name,
        datasets=results,
        plcc_mode="logistic" if config.logistic else "raw",
        config=config.to_dict(),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    evaluation.save_json(output / RESULTS_JSON)
    write_text(output / RESULTS_MD, report_markdown(evaluation))
    write_json(output / SKIPPED_JSON, skipped)
    return evaluation
