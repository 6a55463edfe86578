"""Training data: the train/held-out images and the AesCoT cold-start records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aesr1.data.records import ScoredImage
from aesr1.train.config import TrainConfig


def check_data_spec(config: TrainConfig) -> None:
    """Parse `data.spec` and check that every root and the cold-start file exist (cheap, before heavy work)."""
    from aesr1.data import parse_data_spec

    specs = parse_data_spec(config.data.spec)
    for spec in specs:
        if spec.name != "synthetic" and not Path(spec.root).expanduser().exists():
            raise FileNotFoundError(f"--data: the root of {spec.name!r} does not exist: {spec.root}")
    if config.data.cold_start is not None:
        if not Path(config.data.cold_start).is_file():
            raise FileNotFoundError(f"data.cold_start: no such file {config.data.cold_start!r}")
    elif config.sft.num_train_epochs > 0 and any(spec.name != "synthetic" for spec in specs):
        raise ValueError(
            "data.cold_start is required for real datasets: build AesCoT data first "
            "(python -m aesr1.aescot build ...) and pass --cold-start <jsonl>, or set sft.num_train_epochs: 0"
        )


def load_items(config: TrainConfig, output_dir: str | Path) -> tuple[list[ScoredImage], list[ScoredImage]]:
    """(train, held-out) images of `data.spec`; synthetic data is drawn under `<output_dir>/synthetic`."""
    from aesr1.data import parse_data_spec

    data = config.data
    train: list[ScoredImage] = []
    test: list[ScoredImage] = []
    for spec in parse_data_spec(data.spec):
        kwargs: dict[str, Any] = {
            "seed": data.split_seed,
            "test_fraction": data.test_fraction,
            "progress": False,
        }
        if spec.name == "synthetic":
            if spec.root is None:
                spec.root = str(Path(output_dir) / "synthetic")
            kwargs.update(n=data.synthetic_n, image_size=data.synthetic_image_size)
        train.extend(spec.load("train", **kwargs))
        test.extend(spec.load("test", **kwargs))
    if data.max_train_images is not None:
        train = train[: data.max_train_images]
    if data.max_eval_images is not None:
        test = test[: data.max_eval_images]
    if not train:
        raise ValueError(f"data.spec {data.spec!r} gave no training images")
    if len(test) < 2:
        raise ValueError(f"data.spec {data.spec!r} gave {len(test)} held-out images; need at least 2")
    return train, test


def cold_start_records(
    config: TrainConfig, train: list[ScoredImage], output_dir: str | Path, *, is_main: bool = True
) -> list[dict]:
    """The AesCoT records for SFT: `data.cold_start`, else `<output_dir>/aescot.jsonl` built from
    `train` with the template expert (synthetic data).

    Only the main process builds, and only when the file is not there yet; the other processes
    read it once the main one is done (`main_process_first`). The build is published whole, so a
    resumed run never reads a file a kill cut short.
    """
    from aesr1.aescot.store import OUTPUT_FILE_NAME
    from aesr1.train.sft import read_cold_start

    if config.data.cold_start is not None:
        return read_cold_start(config.data.cold_start)
    path = Path(output_dir) / OUTPUT_FILE_NAME
    if is_main and not path.is_file():
        _build_template_cold_start(config, train, path)
    return read_cold_start(path)


def _build_template_cold_start(config: TrainConfig, train: list[ScoredImage], path: Path) -> None:
    from aesr1.aescot import TemplateExpert, build_dataset
    from aesr1.train.durable import publish_file, remove_tree, staging_path

    staged = staging_path(path.with_suffix(""))
    remove_tree(staged)
    staged.mkdir()
    build_dataset(
        train, TemplateExpert(seed=config.seed), staged / path.name, per_bin=config.data.cold_start_per_bin,
        seed=config.seed, progress=config.progress,
    )  # fmt: skip
    for side in staged.iterdir():  # side files first: the records file appearing means all are there
        if side.name != path.name and side.suffix != ".lock":
            publish_file(side, path.parent / side.name)
    publish_file(staged / path.name, path)
    remove_tree(staged)
