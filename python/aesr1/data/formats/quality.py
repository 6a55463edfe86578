"""Two image-quality (not aesthetics) datasets users ask for: KonIQ-10k and SPAQ.

========== ======================================================= ========================= ===========
dataset    annotation file                                          score                     split
========== ======================================================= ========================= ===========
KonIQ-10k  ``koniq10k_scores_and_distributions.csv``                ``MOS`` 1-5 (+ ``SD``),   official if
           (+ ``koniq10k_distributions_sets.csv`` for the sets)     or ``MOS_zscore`` 0-100   sets known
SPAQ       ``Annotations/MOS and Image attribute scores.xlsx``      ``MOS`` 0-100             seeded 9:1
           (or a CSV export of it)
========== ======================================================= ========================= ===========
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aesr1.data.files import ImageResolver, find_file
from aesr1.data.formats.base import (
    Annotation,
    ReadResult,
    csv_header,
    optional_float,
    parse_float,
    read_csv_rows,
    require_columns,
)
from aesr1.data.normalization import ScoreRange

KONIQ_MOS_RANGE = ScoreRange(1.0, 5.0)
KONIQ_ZSCORE_RANGE = ScoreRange(0.0, 100.0)
SPAQ_RANGE = ScoreRange(0.0, 100.0)

_KONIQ_SETS = {"training": "train", "train": "train", "validation": "val", "val": "val", "test": "test"}
_SPAQ_ATTRIBUTES = ("Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness")


def _koniq_sets(root: Path, rows_have_set: bool, scores_path: Path) -> dict[str, str]:
    """image name -> official set, from the scores file's `set` column or the sets file."""
    if rows_have_set:
        return {row["image_name"]: row["set"] for _, row in read_csv_rows(scores_path)}
    for candidate in ("koniq10k_distributions_sets.csv", "metadata/koniq10k_distributions_sets.csv"):
        path = root / candidate
        if path.is_file():
            require_columns("koniq10k", path, csv_header(path), ("image_name", "set"))
            return {row["image_name"]: row["set"] for _, row in read_csv_rows(path)}
    return {}


def read_koniq(root: Path, split: str, options: dict[str, Any]) -> ReadResult:
    """KonIQ-10k (Hosu et al., 2020). Option ``mos``: "mos" (default, the 1-5 MOS with its ``SD``) or
    "zscore" (``MOS_zscore`` on 0-100; its std is unknown). The official training/validation/test sets
    apply when ``koniq10k_distributions_sets.csv`` (or a ``set`` column) is present, otherwise the
    seeded 9:1 split."""
    mos = options.get("mos", "mos")
    if mos not in ("mos", "zscore"):
        raise ValueError(f"koniq10k: option mos must be 'mos' or 'zscore', got {mos!r}")
    path = find_file(
        "koniq10k",
        root,
        [
            "koniq10k_scores_and_distributions.csv",
            "koniq10k_scores_and_distributions/koniq10k_scores_and_distributions.csv",
            "metadata/koniq10k_scores_and_distributions.csv",
        ],
    )
    columns = csv_header(path)
    column, score_range = ("MOS", KONIQ_MOS_RANGE) if mos == "mos" else ("MOS_zscore", KONIQ_ZSCORE_RANGE)
    require_columns("koniq10k", path, columns, ("image_name", column))
    sets = _koniq_sets(root, "set" in columns, path)
    resolve = ImageResolver(root, ["1024x768", "512x384", "images", ""], options.get("image_dir"))
    annotations = []
    for line, row in read_csv_rows(path):
        where = f"{path}:{line}"
        name = row["image_name"]
        row_split = None
        if sets:
            official = sets.get(name)
            if official not in _KONIQ_SETS:
                raise ValueError(f"koniq10k: image {name!r} ({where}) has no known set (got {official!r})")
            row_split = _KONIQ_SETS[official]
        std = score_range.normalize_std(optional_float(row.get("SD"))) if mos == "mos" else None
        annotations.append(
            Annotation(
                id=name,
                image=resolve(name),
                score=score_range.normalize(parse_float(row[column], where), f"at {where}"),
                std=std,
                split=row_split,
            )
        )
    return ReadResult(annotations)


def _xlsx_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        import openpyxl
    except ImportError as error:
        raise ImportError(
            f"spaq: reading {path.name!r} needs openpyxl (pip install openpyxl); or export the sheet to "
            f"{path.with_suffix('.csv').name!r} next to it"
        ) from error
    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        rows = workbook.active.iter_rows(values_only=True)
        header = [str(name).strip() if name is not None else "" for name in next(rows, ())]
        for number, values in enumerate(rows, start=2):
            if values is None or all(value is None or str(value).strip() == "" for value in values):
                continue
            yield number, dict(zip(header, values, strict=False))
    finally:
        workbook.close()


def read_spaq(root: Path, split: str, options: dict[str, Any]) -> ReadResult:
    """SPAQ (Fang et al., 2020): ``Annotations/MOS and Image attribute scores.xlsx`` (or its CSV export)
    with ``Image name`` and ``MOS`` (0-100) plus five attribute scores; images in ``TestImage/``."""
    names = [
        "Annotations/MOS and Image attribute scores.xlsx",
        "MOS and Image attribute scores.xlsx",
        "Annotations/MOS and Image attribute scores.csv",
        "MOS and Image attribute scores.csv",
    ]
    path = find_file("spaq", root, names, "annotation file 'MOS and Image attribute scores.xlsx' (or .csv)")
    rows = _xlsx_rows(path) if path.suffix == ".xlsx" else read_csv_rows(path)
    resolve = ImageResolver(root, ["TestImage", "images", ""], options.get("image_dir"))
    annotations = []
    for line, row in rows:
        where = f"{path}:{line}"
        if "Image name" not in row or "MOS" not in row:
            raise ValueError(f"spaq: {path} needs columns 'Image name' and 'MOS'; it has {sorted(row)}")
        name = str(row["Image name"]).strip()
        attributes = {
            key.lower(): value
            for key in _SPAQ_ATTRIBUTES
            if (value := optional_float(row.get(key))) is not None
        }
        annotations.append(
            Annotation(
                id=name,
                image=resolve(name),
                score=SPAQ_RANGE.normalize(parse_float(row["MOS"], where), f"at {where}"),
                attributes=attributes,
            )
        )
    return ReadResult(annotations)
