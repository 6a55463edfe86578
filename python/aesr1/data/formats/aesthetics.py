"""The five image-aesthetics benchmarks of Table 1, in their distributed formats.

=========== ============================================================ ======== =====================
dataset     annotation files (relative to the dataset root)               range    split
=========== ============================================================ ======== =====================
AVA         ``AVA.txt`` + ``aesthetics_image_lists/generic_test.jpgl``     1-10     official test list
TAD66K      ``train.csv`` / ``test.csv`` (or under ``labels/merge/``)      1-10     official
FLICKR-AES  ``FLICKR-AES_image_score.txt`` (+ per-worker label CSV: std)   1-5      seeded 9:1
PARA        ``annotation/PARA-Giaa{Train,Test}.csv``                       1-5      official
AADB        ``imgListFiles_label/imgList{Train,Validation,TestNew}...``    0-1      official (+ val)
=========== ============================================================ ======== =====================
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from aesr1.data.files import DatasetFileNotFoundError, ImageResolver, find_file
from aesr1.data.formats.base import (
    Annotation,
    ReadResult,
    csv_header,
    optional_float,
    parse_float,
    read_csv_rows,
    require_columns,
)
from aesr1.data.normalization import ScoreRange, vote_mean_std_rows

AVA_RANGE = ScoreRange(1.0, 10.0)
TAD66K_RANGE = ScoreRange(1.0, 10.0)
FLICKR_AES_RANGE = ScoreRange(1.0, 5.0)
PARA_RANGE = ScoreRange(1.0, 5.0)
AADB_RANGE = ScoreRange(0.0, 1.0)

#: AVA.txt columns: index, image id, vote counts for scores 1..10, two semantic tag ids, challenge id.
_AVA_FIELDS = 15


def _where(path: Path, line: int) -> str:
    return f"{path}:{line}"


def read_ava(root: Path, split: str, options: dict[str, Any]) -> ReadResult:
    """AVA (Murray et al., 2012): MOS = sum_i i c_i / sum_i c_i over the votes c_1..c_10; std from the
    same histogram; images ``<id>.jpg``; test = ``generic_test.jpgl``, train = every other image."""
    ava_txt = find_file("ava", root, ["AVA.txt", "AVA_dataset/AVA.txt"])
    test_ids: set[str] = set()
    if split != "all":
        if options.get("test_list"):
            test_list = Path(options["test_list"]).expanduser()
            if not test_list.is_file():
                raise DatasetFileNotFoundError("ava", "test list", [test_list])
        else:
            test_list = find_file(
                "ava",
                ava_txt.parent,
                ["aesthetics_image_lists/generic_test.jpgl", "generic_test.jpgl"],
                "test list 'aesthetics_image_lists/generic_test.jpgl'",
            )
        test_ids = {line.strip() for line in test_list.read_text().splitlines() if line.strip()}
    resolve = ImageResolver(
        root, ["images", "image", "AVA_dataset/images", "AVA_images", ""], options.get("image_dir")
    )
    rows: list[tuple[int, list[str]]] = []
    with open(ava_txt, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != _AVA_FIELDS:
                raise ValueError(
                    f"ava: {_where(ava_txt, number)} has {len(fields)} fields, expected {_AVA_FIELDS} "
                    "(index, image id, 10 vote counts, 2 tag ids, challenge id)"
                )
            if split == "all" or ("test" if fields[1] in test_ids else "train") == split:
                rows.append((number, fields))
    try:
        counts = np.array([[int(v) for v in fields[2:12]] for _, fields in rows], dtype=np.int64).reshape(
            -1, 10
        )
    except ValueError as error:
        raise ValueError(f"ava: vote counts in {ava_txt} are not all integers: {error}") from error
    # Vectorised over the 255K rows (a Python loop per row costs seconds); same formula as vote_mean_std.
    mos, std = vote_mean_std_rows(counts, range(1, 11))
    annotations: list[Annotation] = []
    invalid: list[tuple[str, str]] = []
    for (number, fields), votes, mean, spread in zip(rows, counts.tolist(), mos, std, strict=True):
        if sum(votes) <= 0:
            invalid.append((_where(ava_txt, number), "no votes"))
            continue
        annotations.append(
            Annotation(
                id=fields[1],
                image=resolve(f"{fields[1]}.jpg"),
                score=AVA_RANGE.normalize(float(mean), f"at {_where(ava_txt, number)}"),
                std=AVA_RANGE.normalize_std(float(spread)),
                split="test" if fields[1] in test_ids else "train",
                attributes={"votes": votes, "tags": [fields[12], fields[13]], "challenge": fields[14]},
            )
        )
    return ReadResult(annotations, invalid)


def _split_files(split: str, files: dict[str, str]) -> list[tuple[str, str]]:
    return list(files.items()) if split == "all" else [(split, files[split])]


def read_tad66k(root: Path, split: str, options: dict[str, Any]) -> ReadResult:
    """TAD66K (He et al., 2022): ``train.csv`` / ``test.csv`` with columns ``image,score`` (1-10)."""
    resolve = ImageResolver(root, ["images", "TAD66K", "imgs", ""], options.get("image_dir"))
    annotations: list[Annotation] = []
    for row_split, name in _split_files(split, {"train": "train.csv", "test": "test.csv"}):
        path = find_file("tad66k", root, [name, f"labels/merge/{name}", f"labels/{name}"])
        require_columns("tad66k", path, csv_header(path), ("image", "score"))
        for line, row in read_csv_rows(path):
            where = f"at {_where(path, line)}"
            annotations.append(
                Annotation(
                    id=row["image"],
                    image=resolve(row["image"]),
                    score=TAD66K_RANGE.normalize(parse_float(row["score"], _where(path, line)), where),
                    split=row_split,
                )
            )
    return ReadResult(annotations)


def _flickr_worker_stds(path: Path) -> dict[str, float]:
    """Population std of the per-worker 1-5 ratings of each image (std on the raw scale)."""
    require_columns("flickr-aes", path, csv_header(path), ("imagePair", "score"))
    ratings: dict[str, list[float]] = defaultdict(list)
    for line, row in read_csv_rows(path):
        ratings[row["imagePair"]].append(parse_float(row["score"], _where(path, line)))
    stds = {}
    for name, values in ratings.items():
        mean = sum(values) / len(values)
        stds[name] = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return stds


def read_flickr_aes(root: Path, split: str, options: dict[str, Any]) -> ReadResult:
    """FLICKR-AES (Ren et al., 2017): ``FLICKR-AES_image_score.txt`` lines ``<name> <score>`` (1-5;
    names carry leading spaces in the distributed file); the per-worker label CSV, when present, gives
    each image's std. No official generic split: the seeded 9:1 split applies."""
    score_file = find_file(
        "flickr-aes", root, ["FLICKR-AES_image_score.txt", "data/FLICKR-AES_image_score.txt"]
    )
    stds: dict[str, float] = {}
    for candidate in (
        "FLICKR-AES_image_labeled_by_each_worker.csv",
        "FLICKR-AES-001/FLICKR-AES_image_labeled_by_each_worker.csv",
        "data/FLICKR-AES_image_labeled_by_each_worker.csv",
    ):
        if (root / candidate).is_file():
            stds = _flickr_worker_stds(root / candidate)
            break
    resolve = ImageResolver(
        root, ["40K", "FLICKR-AES-001/40K", "data/40K", "images", ""], options.get("image_dir")
    )
    annotations: list[Annotation] = []
    with open(score_file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise ValueError(
                    f"flickr-aes: {_where(score_file, number)} has {len(fields)} fields, expected "
                    "'<image name> <score>'"
                )
            name, raw = fields
            annotations.append(
                Annotation(
                    id=name,
                    image=resolve(name),
                    score=FLICKR_AES_RANGE.normalize(
                        parse_float(raw, _where(score_file, number)), f"at {_where(score_file, number)}"
                    ),
                    std=FLICKR_AES_RANGE.normalize_std(stds.get(name)),
                )
            )
    return ReadResult(annotations)


def read_para(root: Path, split: str, options: dict[str, Any]) -> ReadResult:
    """PARA (Yang et al., 2022): ``annotation/PARA-Giaa{Train,Test}.csv`` with ``sessionId``,
    ``imageName``, ``aestheticScore_mean`` and ``aestheticScore_std`` (1-5); images
    ``imgs/<sessionId>/<imageName>``."""
    resolve = ImageResolver(root, ["imgs", "images", ""], options.get("image_dir"))
    needed = ("sessionId", "imageName", "aestheticScore_mean")
    annotations: list[Annotation] = []
    files = {"train": "PARA-GiaaTrain.csv", "test": "PARA-GiaaTest.csv"}
    for row_split, name in _split_files(split, files):
        path = find_file("para", root, [f"annotation/{name}", name])
        require_columns("para", path, csv_header(path), needed)
        for line, row in read_csv_rows(path):
            where = _where(path, line)
            relative = f"{row['sessionId']}/{row['imageName']}"
            annotations.append(
                Annotation(
                    id=relative,
                    image=resolve(relative),
                    score=PARA_RANGE.normalize(parse_float(row["aestheticScore_mean"], where), f"at {where}"),
                    std=PARA_RANGE.normalize_std(optional_float(row.get("aestheticScore_std"))),
                    split=row_split,
                    attributes={"session": row["sessionId"]},
                )
            )
    return ReadResult(annotations)


def read_aadb(root: Path, split: str, options: dict[str, Any]) -> ReadResult:
    """AADB (Kong et al., 2016): ``imgListFiles_label/imgList{Train,Validation,TestNew}Regression_score.txt``
    lines ``<name> <score>``, already on [0, 1]."""
    resolve = ImageResolver(
        root, ["datasetImages_originalSize", "AADB_newtest", "images", ""], options.get("image_dir")
    )
    files = {
        "train": "imgListTrainRegression_score.txt",
        "val": "imgListValidationRegression_score.txt",
        "test": "imgListTestNewRegression_score.txt",
    }
    annotations: list[Annotation] = []
    for row_split, name in _split_files(split, files):
        path = find_file("aadb", root, [f"imgListFiles_label/{name}", name])
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 2:
                    raise ValueError(
                        f"aadb: {_where(path, number)} has {len(fields)} fields, expected '<image name> <score>'"
                    )
                where = _where(path, number)
                annotations.append(
                    Annotation(
                        id=fields[0],
                        image=resolve(fields[0]),
                        score=AADB_RANGE.normalize(parse_float(fields[1], where), f"at {where}"),
                        split=row_split,
                    )
                )
    return ReadResult(annotations)
