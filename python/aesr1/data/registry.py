"""`load_dataset` (interface 4): every supported dataset by name, with splits, image checks and a report.

Common options of every dataset:
    seed: seed of the 9:1 split where no official split exists (Appendix C); default 0.
    test_fraction: test share of that split; default 0.1.
    check_images: "open" (default), "decode", "exists" or "none" (see `aesr1.data.files.IMAGE_CHECKS`).
    image_dir: folder holding the images, when not where the distribution puts them.
    progress: show a progress bar while checking many images; default True.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aesr1.data import files as image_files
from aesr1.data.files import DatasetFileNotFoundError, require_root
from aesr1.data.formats import aesthetics, generic, quality
from aesr1.data.formats.base import Annotation, DatasetFormat
from aesr1.data.normalization import ScoreRange
from aesr1.data.records import ScoredImage
from aesr1.data.report import LoadedDataset, LoadReport
from aesr1.data.splits import DEFAULT_TEST_FRACTION, check_split, seeded_test_ids

logger = logging.getLogger(__name__)

_RANGE_OPTION = {"score_range": "the file's score range (lo, hi) or 'lo..hi'"}
_IMAGE_ROOT = {"image_root": "folder that relative image paths start from (default: the file's folder)"}

#: Every supported dataset by canonical name.
DATASETS: dict[str, DatasetFormat] = {
    fmt.name: fmt
    for fmt in (
        DatasetFormat(
            "ava",
            "AVA",
            aesthetics.read_ava,
            aesthetics.AVA_RANGE,
            ("train", "test"),
            options={"test_list": "a .jpgl test list other than aesthetics_image_lists/generic_test.jpgl"},
            folder_names=("AVA", "AVA_dataset"),
            marker="AVA.txt",
        ),
        DatasetFormat(
            "tad66k",
            "TAD66K",
            aesthetics.read_tad66k,
            aesthetics.TAD66K_RANGE,
            ("train", "test"),
            aliases=("tad", "tad-66k"),
            folder_names=("TAD66K", "TAD-66K"),
            marker="labels/merge/test.csv",
        ),
        DatasetFormat(
            "flickr-aes",
            "FLICKR",
            aesthetics.read_flickr_aes,
            aesthetics.FLICKR_AES_RANGE,
            aliases=("flickr", "flickraes", "flickr_aes"),
            folder_names=("FLICKR-AES", "FLICKR_AES", "FLICKR"),
            marker="FLICKR-AES_image_score.txt",
        ),
        DatasetFormat(
            "para",
            "PARA",
            aesthetics.read_para,
            aesthetics.PARA_RANGE,
            ("train", "test"),
            folder_names=("PARA",),
            marker="annotation/PARA-GiaaTest.csv",
        ),
        DatasetFormat(
            "aadb",
            "AADB",
            aesthetics.read_aadb,
            aesthetics.AADB_RANGE,
            ("train", "val", "test"),
            folder_names=("AADB",),
            marker="imgListFiles_label/imgListTestNewRegression_score.txt",
        ),
        DatasetFormat(
            "koniq10k",
            "KonIQ-10k",
            quality.read_koniq,
            quality.KONIQ_MOS_RANGE,
            ("train", "val", "test"),
            options={"mos": "'mos' (1-5 MOS, default) or 'zscore' (MOS_zscore, 0-100)"},
            aliases=("koniq", "koniq-10k"),
            folder_names=("koniq10k", "KonIQ-10k", "koniq"),
            marker="koniq10k_scores_and_distributions.csv",
        ),
        DatasetFormat(
            "spaq",
            "SPAQ",
            quality.read_spaq,
            quality.SPAQ_RANGE,
            folder_names=("SPAQ",),
            marker="Annotations/MOS and Image attribute scores.xlsx",
        ),
        DatasetFormat(
            "csv",
            "CSV",
            generic.read_csv_file,
            None,
            options={**_RANGE_OPTION, **_IMAGE_ROOT},
            root_is_file=True,
        ),
        DatasetFormat(
            "jsonl",
            "JSONL",
            generic.read_jsonl_file,
            None,
            options={**_RANGE_OPTION, **_IMAGE_ROOT},
            root_is_file=True,
        ),
        DatasetFormat(
            "aesr1",
            "Aes-R1 JSON",
            generic.read_aesr1,
            ScoreRange(0.0, 1.0),
            options={**_RANGE_OPTION, **_IMAGE_ROOT},
            aliases=("aes-r1",),
            root_is_file=True,
        ),
        DatasetFormat(
            "visualquality-r1",
            "VisualQuality-R1 JSONL",
            generic.read_visualquality_r1,
            ScoreRange(1.0, 5.0),
            options={**_RANGE_OPTION, **_IMAGE_ROOT},
            aliases=("vqr1", "visualquality"),
            root_is_file=True,
        ),
        DatasetFormat(
            "q-align",
            "Q-Align JSON",
            generic.read_q_align,
            None,
            options={**_RANGE_OPTION, **_IMAGE_ROOT},
            aliases=("qalign",),
            root_is_file=True,
        ),
    )
}

#: Column order of the paper's Table 1.
TABLE1_DATASETS = ("tad66k", "ava", "flickr-aes", "para", "aadb")

_SYNTHETIC_OPTIONS = {"n": "number of images", "image_size": "image side in pixels"}
_COMMON_OPTIONS = ("seed", "test_fraction", "check_images", "image_dir", "progress")


def canonical_name(name: str) -> str:
    """The canonical dataset name for `name` or one of its aliases (case-insensitive)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    if key == "synthetic":
        return key
    for fmt in DATASETS.values():
        if key == fmt.name or key in fmt.aliases:
            return fmt.name
    known = ", ".join([*DATASETS, "synthetic"])
    raise ValueError(f"name: unknown dataset {name!r}; supported: {known}")


def display_name(name: str) -> str:
    """Title used in tables (Table 1 spelling for the five benchmarks)."""
    canonical = canonical_name(name)
    return "Synthetic" if canonical == "synthetic" else DATASETS[canonical].title


def default_synthetic_root() -> Path:
    cache = os.environ.get("AESR1_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "aesr1")
    return Path(cache) / "synthetic"


def _synthetic(root: Any, options: dict[str, Any], seed: int) -> list[Annotation]:
    from aesr1.data.synthetic import make_synthetic_dataset

    kwargs = {key: int(options[key]) for key in ("n", "image_size") if key in options}
    root = Path(root).expanduser() if root is not None else default_synthetic_root()
    items = make_synthetic_dataset(root, seed=seed, **kwargs)
    return [Annotation(i.id, str(i.image), i.score, i.std, None, dict(i.attributes)) for i in items]


def load_dataset(
    name: str,
    root: str | os.PathLike | None,
    split: str = "test",
    *,
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    check_images: str = "open",
    image_dir: str | os.PathLike | None = None,
    progress: bool = True,
    **options: Any,
) -> LoadedDataset:
    """Loads one split of a dataset from the user's copy in its distributed format.

    Scores are normalised to [0, 1] by (s - lo) / (hi - lo) with the dataset's documented range and the
    per-image std (where known) by std / (hi - lo). Official splits are used where they exist (AVA,
    TAD66K, PARA, AADB, KonIQ-10k with its sets file, files carrying a `split` field); otherwise a 9:1
    split seeded by `seed` (Appendix C). Missing or unreadable images are skipped, counted and listed
    in the returned list's `report` (never an exception); a missing annotation file raises
    `DatasetFileNotFoundError` naming the file expected.

    Returns a `LoadedDataset`: a list of `ScoredImage` with a `report` attribute (`LoadReport`).
    """
    canonical = canonical_name(name)
    check_split(split)
    if check_images not in image_files.IMAGE_CHECKS:
        raise ValueError(f"check_images must be one of {image_files.IMAGE_CHECKS}, got {check_images!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    fmt = DATASETS.get(canonical)
    accepted = _SYNTHETIC_OPTIONS if fmt is None else fmt.options
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"load_dataset() got unknown option(s) {unknown} for {canonical!r}; accepted: "
            f"{sorted([*accepted, *_COMMON_OPTIONS])}"
        )
    if image_dir is not None:
        options["image_dir"] = image_dir

    if fmt is None:  # synthetic: generated on demand, seeded 9:1 split
        annotations = _synthetic(root, options, seed)
        invalid: list[tuple[str, str]] = []
        official: tuple[str, ...] = ()
        root_text = str(root if root is not None else default_synthetic_root())
    else:
        path = require_root(canonical, root)
        if fmt.root_is_file and not path.is_file():
            raise ValueError(f"{canonical}: root must be the annotation file itself, got the folder {path}")
        if not fmt.root_is_file and not path.is_dir():
            raise ValueError(f"{canonical}: root must be the dataset folder, got the file {path}")
        if split == "val" and fmt.official_splits and "val" not in fmt.official_splits:
            raise ValueError(f"split: {canonical} has no validation split (official: {fmt.official_splits})")
        result = fmt.reader(path, split, options)
        annotations, invalid, official = result.annotations, result.invalid_rows, fmt.official_splits
        root_text = str(path)

    labels = {a.split for a in annotations}
    if None in labels and len(labels) > 1:
        raise ValueError(f"{canonical}: some records carry a split and others do not; give all or none")
    seeded = labels == {None}
    if seeded:
        if split == "val":
            raise ValueError(
                f"split: {canonical} has no validation split here (only the seeded train/test split)"
            )
        test_ids = (
            seeded_test_ids((a.id for a in annotations), test_fraction, seed) if split != "all" else set()
        )
        for a in annotations:
            a.split = "test" if a.id in test_ids else "train"
        ratio = (
            "9:1" if test_fraction == DEFAULT_TEST_FRACTION else f"{1 - test_fraction:g}:{test_fraction:g}"
        )
        split_rule = f"seeded {ratio} (seed={seed})"
    else:
        if split == "val" and "val" not in labels and official and "val" not in official:
            raise ValueError(f"split: {canonical} has no validation split")
        split_rule = "official"
    chosen = [a for a in annotations if split == "all" or a.split == split]

    report = LoadReport(
        dataset=canonical,
        split=split,
        root=root_text,
        annotated=len(annotations),
        in_split=len(chosen),
        split_rule=split_rule,
        invalid_rows=list(invalid),
    )
    verdicts = image_files.check_images([str(a.image) for a in chosen], check_images, progress)
    items = LoadedDataset(report=report)
    for annotation, verdict in zip(chosen, verdicts, strict=True):
        if verdict is None:
            items.append(
                ScoredImage(
                    image=str(annotation.image),
                    score=annotation.score,
                    source=canonical,
                    id=annotation.id,
                    std=annotation.std,
                    attributes=annotation.attributes,
                )
            )
        elif verdict == "missing":
            report.missing.append(str(annotation.image))
        else:
            report.unreadable.append((str(annotation.image), verdict))
    report.loaded = len(items)
    if report.skipped or report.invalid_rows:
        logger.warning("%s", report.summary())
    else:
        logger.info("%s", report.summary())
    return items


def find_dataset_root(name: str, root: str | os.PathLike) -> Path:
    """The folder of dataset `name` under a common `root` (``--datasets ava,para --root /data``): `root`
    itself if it holds the dataset's marker file, else a child folder named like the dataset."""
    canonical = canonical_name(name)
    base = Path(root).expanduser()
    if canonical == "synthetic":
        return base / "synthetic"
    fmt = DATASETS[canonical]
    if fmt.root_is_file:
        raise ValueError(f"{canonical} is read from a file: give it as '{canonical}:<file>' in --data")
    if not base.is_dir():
        raise DatasetFileNotFoundError(canonical, "datasets root folder", [base])
    if fmt.marker and (base / fmt.marker).exists():
        return base
    wanted = {n.lower() for n in (fmt.name, *fmt.aliases, *fmt.folder_names)}
    for child in sorted(base.iterdir()):
        if child.is_dir() and child.name.lower() in wanted:
            return child
    raise DatasetFileNotFoundError(
        canonical, "dataset folder", [base / folder for folder in (fmt.folder_names or (fmt.name,))]
    )


_INT_OPTIONS = ("seed", "n", "image_size")
_FLOAT_OPTIONS = ("test_fraction",)


@dataclass
class DataSpec:
    """One `name:root` entry of a `--data` spec; `options` as given after '?' (strings)."""

    name: str
    root: str | None
    options: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Key of this entry in results: option 'label', else the dataset name (two files of one format
        in a spec need distinct labels)."""
        return self.options.get("label") or self.name

    def load_options(self) -> dict[str, Any]:
        """The options converted for `load_dataset` ('range' is short for 'score_range')."""
        converted: dict[str, Any] = {}
        for key, value in self.options.items():
            key = "score_range" if key == "range" else key
            if key in ("split", "label"):
                continue
            if key in _INT_OPTIONS:
                try:
                    converted[key] = int(value)
                except ValueError as error:
                    raise ValueError(
                        f"--data: option {key} of {self.name} must be an integer, got {value!r}"
                    ) from error
            elif key in _FLOAT_OPTIONS:
                converted[key] = float(value)
            elif key == "progress":
                converted[key] = value.lower() not in ("0", "false", "no")
            else:
                converted[key] = value
        return converted

    def load(self, split: str = "test", **overrides: Any) -> LoadedDataset:
        """`load_dataset` for this entry; a 'split' option in the spec overrides `split`."""
        options = {**self.load_options(), **overrides}
        return load_dataset(self.name, self.root, self.options.get("split", split), **options)


def parse_data_spec(spec: str) -> list[DataSpec]:
    """Parses a CLI ``--data`` value: comma-separated ``name:root`` entries, each optionally followed
    by ``?key=value&key=value`` options, e.g. ``ava:/data/AVA,tad66k:/data/TAD66K``,
    ``csv:/data/mine.csv?range=1..10&split=all``; ``synthetic`` or ``synthetic:<dir>`` for the built-in
    synthetic dataset."""
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a string, got {type(spec).__name__}")
    entries = [entry.strip() for entry in spec.split(",") if entry.strip()]
    if not entries:
        raise ValueError("spec: empty data spec; expected 'name:root[,name:root...]'")
    specs = []
    for entry in entries:
        entry, _, query = entry.partition("?")
        name, sep, root = entry.partition(":")
        canonical = canonical_name(name)
        options: dict[str, str] = {}
        for pair in filter(None, query.split("&")):
            key, eq, value = pair.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"spec: option {pair!r} of {name!r} must be written key=value")
            options[key.strip()] = value.strip()
        if not sep or not root.strip():
            if canonical != "synthetic":
                raise ValueError(f"spec: entry {entry!r} needs a root: write '{canonical}:<path>'")
            root = None
        specs.append(DataSpec(canonical, root.strip() if root else None, options))
    labels = [s.label for s in specs]
    duplicates = sorted({n for n in labels if labels.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"spec: dataset(s) {duplicates} given more than once; tell them apart with '?label=...'"
        )
    return specs


def load_many(
    specs: list[DataSpec] | Mapping[str, Any], split: str = "test", **overrides: Any
) -> dict[str, LoadedDataset]:
    """Loads several datasets (a parsed spec, or {name: root}) -> {label: records}."""
    if isinstance(specs, Mapping):
        specs = [DataSpec(canonical_name(n), None if r is None else str(r)) for n, r in specs.items()]
    return {spec.label: spec.load(split, **overrides) for spec in specs}
