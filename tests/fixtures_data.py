"""Builders of tiny dataset trees in each distributed format (files and images written by the tests).

Each builder returns the dataset root and the expected records: {id: Expected(raw score, raw std,
split)} on the dataset's own scale, so tests compare the loader's normalised values with a float64
reference computed from these raw numbers.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image


@dataclass
class Expected:
    score: float
    std: float | None
    split: str | None
    image: Path
    zscore: float | None = None  # KonIQ's second score column


def write_image(path: Path, seed: int = 0, size: int = 8) -> Path:
    """A small solid-colour picture (JPEG or PNG by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    Image.new("RGB", (size, size), colour).save(path)
    return path


def write_garbage(path: Path) -> Path:
    """A file with an image name that is not an image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image at all")
    return path


def _place(path: Path, seed: int, missing: set, corrupt: set, key: str) -> None:
    if key in missing:
        return
    if key in corrupt:
        write_garbage(path)
    else:
        write_image(path, seed)


def build_ava(
    root: Path, n: int = 20, seed: int = 0, missing=(), corrupt=(), zero_votes: bool = False
) -> tuple[Path, dict[str, Expected], list[list[int]]]:
    """AVA.txt (15 columns) + aesthetics_image_lists/generic_test.jpgl (every 4th id) + images/<id>.jpg."""
    rng = random.Random(seed)
    missing, corrupt = set(map(str, missing)), set(map(str, corrupt))
    lines, expected, votes = [], {}, []
    test_ids = []
    for index in range(n):
        image_id = str(953000 + index)
        counts = [rng.randrange(0, 30) for _ in range(10)]
        counts[rng.randrange(10)] += 1  # at least one vote
        votes.append(counts)
        lines.append(
            " ".join([str(index + 1), image_id, *map(str, counts), "15", "21", str(1396 + index % 3)])
        )
        split = "test" if index % 4 == 0 else "train"
        if split == "test":
            test_ids.append(image_id)
        path = root / "images" / f"{image_id}.jpg"
        _place(path, index, missing, corrupt, image_id)
        expected[image_id] = Expected(float("nan"), None, split, path)  # filled by the test's reference
    if zero_votes:
        lines.append(" ".join([str(n + 1), "999999", *["0"] * 10, "0", "0", "1396"]))
    (root / "aesthetics_image_lists").mkdir(parents=True, exist_ok=True)
    (root / "AVA.txt").write_text("\n".join(lines) + "\n")
    (root / "aesthetics_image_lists" / "generic_test.jpgl").write_text("\n".join(test_ids) + "\n")
    return root, expected, votes


def build_tad66k(root: Path, n_train: int = 12, n_test: int = 6, seed: int = 1, missing=()):
    """labels/merge/{train,test}.csv with `image,score` (1-10) + images/<name>.jpg."""
    rng = random.Random(seed)
    expected = {}
    (root / "labels" / "merge").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n_train), ("test", n_test)):
        rows = ["image,score"]
        for index in range(count):
            name = f"{split}_{index:03d}.jpg"
            score = round(rng.uniform(1.0, 10.0), 3)
            rows.append(f"{name},{score}")
            path = root / "images" / name
            _place(path, index, set(missing), set(), name)
            expected[name] = Expected(score, None, split, path)
        (root / "labels" / "merge" / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root, expected


def build_flickr_aes(root: Path, n: int = 30, seed: int = 2, workers: bool = True):
    """FLICKR-AES_image_score.txt (`<name> <score>` with leading spaces), the per-worker CSV and 40K/."""
    rng = random.Random(seed)
    expected, score_lines, worker_lines = {}, [], ["worker, imagePair, score"]
    for index in range(n):
        name = f"farm{index % 9}_{1000 + index}_{rng.randrange(10**6):06d}_b.jpg"
        ratings = [rng.randint(1, 5) for _ in range(5)]
        mean = sum(ratings) / len(ratings)
        std = (sum((r - mean) ** 2 for r in ratings) / len(ratings)) ** 0.5
        score_lines.append(f" {name} {mean}")
        worker_lines.extend(f" A{rng.randrange(10**6):06d}, {name}, {r}" for r in ratings)
        path = write_image(root / "40K" / name, index)
        expected[name] = Expected(mean, std if workers else None, None, path)
    (root / "FLICKR-AES_image_score.txt").write_text("\n".join(score_lines) + "\n")
    if workers:
        (root / "FLICKR-AES_image_labeled_by_each_worker.csv").write_text("\n".join(worker_lines) + "\n")
    return root, expected


def build_para(root: Path, n_train: int = 8, n_test: int = 4, seed: int = 3):
    """annotation/PARA-Giaa{Train,Test}.csv + imgs/<sessionId>/<imageName>."""
    rng = random.Random(seed)
    expected = {}
    (root / "annotation").mkdir(parents=True, exist_ok=True)
    header = "sessionId,imageName,aestheticScore_1.0,aestheticScore_mean,aestheticScore_std,qualityScore_mean"
    for split, count, file in (
        ("train", n_train, "PARA-GiaaTrain.csv"),
        ("test", n_test, "PARA-GiaaTest.csv"),
    ):
        rows = [header]
        for index in range(count):
            session = f"session{index % 3}"
            name = f"iaa_pub{index + (0 if split == 'train' else 500)}_.jpg"
            mean, std = round(rng.uniform(1.0, 5.0), 4), round(rng.uniform(0.2, 1.5), 4)
            rows.append(f"{session},{name},3,{mean},{std},{round(rng.uniform(1, 5), 2)}")
            path = write_image(root / "imgs" / session / name, index)
            expected[f"{session}/{name}"] = Expected(mean, std, split, path)
        (root / "annotation" / file).write_text("\n".join(rows) + "\n")
    return root, expected


def build_aadb(root: Path, counts=(6, 3, 4), seed: int = 4):
    """imgListFiles_label/imgList{Train,Validation,TestNew}Regression_score.txt (0-1) + image folders."""
    rng = random.Random(seed)
    expected = {}
    (root / "imgListFiles_label").mkdir(parents=True, exist_ok=True)
    files = (("train", "Train"), ("val", "Validation"), ("test", "TestNew"))
    for (split, word), count in zip(files, counts, strict=True):
        lines = []
        for index in range(count):
            name = f"farm1_{split}_{index}.jpg"
            score = round(rng.random(), 3)
            lines.append(f"{name} {score}")
            folder = "AADB_newtest" if split == "test" else "datasetImages_originalSize"
            path = write_image(root / folder / name, index)
            expected[name] = Expected(score, None, split, path)
        (root / "imgListFiles_label" / f"imgList{word}Regression_score.txt").write_text(
            "\n".join(lines) + "\n"
        )
    return root, expected


def build_koniq(root: Path, n: int = 20, seed: int = 5, sets: bool = True):
    """koniq10k_scores_and_distributions.csv (+ koniq10k_distributions_sets.csv) + 1024x768/."""
    rng = random.Random(seed)
    expected = {}
    rows = ["image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,MOS_zscore"]
    set_rows = ["image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,set"]
    names = {0: "test", 1: "validation"}
    for index in range(n):
        name = f"{826373 + index}.jpg"
        mos, sd, z = (
            round(rng.uniform(1, 5), 4),
            round(rng.uniform(0.3, 1.0), 4),
            round(rng.uniform(0, 100), 3),
        )
        rows.append(f"{name},1,2,3,4,5,15,{mos},{sd},{z}")
        official = names.get(index % 5, "training")
        set_rows.append(f"{name},1,2,3,4,5,15,{z},{sd},{official}")
        path = write_image(root / "1024x768" / name, index)
        split = {"training": "train", "validation": "val", "test": "test"}[official] if sets else None
        expected[name] = Expected(mos, sd, split, path, zscore=z)
    (root / "koniq10k_scores_and_distributions.csv").write_text("\n".join(rows) + "\n")
    if sets:
        (root / "koniq10k_distributions_sets.csv").write_text("\n".join(set_rows) + "\n")
    return root, expected


def build_spaq(root: Path, n: int = 10, seed: int = 6, as_csv: bool = False):
    """Annotations/MOS and Image attribute scores.xlsx (or its CSV export) + TestImage/."""
    rng = random.Random(seed)
    header = ["Image name", "MOS", "Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness"]
    rows, expected = [], {}
    for index in range(n):
        name = f"{index + 1:05d}.jpg"
        mos = round(rng.uniform(0, 100), 2)
        rows.append([name, mos, *(round(rng.uniform(0, 100), 1) for _ in range(5))])
        path = write_image(root / "TestImage" / name, index)
        expected[name] = Expected(mos, None, None, path)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    if as_csv:
        lines = [",".join(header), *(",".join(map(str, row)) for row in rows)]
        (root / "Annotations" / "MOS and Image attribute scores.csv").write_text("\n".join(lines) + "\n")
    else:
        import openpyxl

        workbook = openpyxl.Workbook()
        sheet = workbook.active
        sheet.append(header)
        for row in rows:
            sheet.append(row)
        workbook.save(root / "Annotations" / "MOS and Image attribute scores.xlsx")
    return root, expected


def _generic_items(root: Path, n: int, seed: int, lo: float, hi: float):
    rng = random.Random(seed)
    items = []
    for index in range(n):
        name = f"img_{index:03d}.png"
        path = write_image(root / "pics" / name, index)
        items.append((f"pics/{name}", round(rng.uniform(lo, hi), 3), path))
    return items


def build_csv(root: Path, n: int = 20, seed: int = 7, lo: float = 1.0, hi: float = 10.0, with_split=False):
    items = _generic_items(root, n, seed, lo, hi)
    header = "image,score,std" + (",split" if with_split else "")
    lines, expected = [header], {}
    for index, (image, score, path) in enumerate(items):
        split = ("test" if index % 5 == 0 else "train") if with_split else None
        std = round((hi - lo) * 0.05, 4)
        lines.append(f"{image},{score},{std}" + (f",{split}" if with_split else ""))
        expected[image] = Expected(score, std, split, path)
    (root / "scores.csv").write_text("\n".join(lines) + "\n")
    return root / "scores.csv", expected


def build_jsonl(root: Path, n: int = 12, seed: int = 8, lo: float = 0.0, hi: float = 100.0):
    items = _generic_items(root, n, seed, lo, hi)
    expected = {}
    with open(root / "scores.jsonl", "w") as handle:
        for image, score, path in items:
            handle.write(json.dumps({"image": image, "score": score}) + "\n")
            expected[image] = Expected(score, None, None, path)
    return root / "scores.jsonl", expected


def build_aesr1_json(root: Path, n: int = 10, seed: int = 9):
    """The released Aes-R1 format: messages (user prompt, assistant score) + images."""
    items = _generic_items(root, n, seed, 0.0, 1.0)
    records, expected = [], {}
    for index, (image, score, path) in enumerate(items):
        answer = f"{score:.2f}" if index % 2 else f"<think>fine light</think><answer>{score:.2f}</answer>"
        records.append(
            {
                "messages": [
                    {"role": "user", "content": "You are an aesthetic expert. <image> rate it"},
                    {"role": "assistant", "content": answer},
                ],
                "images": image if index % 3 else [image],
            }
        )
        expected[image] = Expected(round(score, 2), None, None, path)
    (root / "aesr1.json").write_text(json.dumps(records, indent=1))
    return root / "aesr1.json", expected


def build_vqr1_jsonl(root: Path, n: int = 10, seed: int = 10):
    """VisualQuality-R1 (VLM-R1) JSONL: image (list) + conversations human / gpt (score 1-5)."""
    items = _generic_items(root, n, seed, 1.0, 5.0)
    expected = {}
    with open(root / "vqr1.jsonl", "w") as handle:
        for index, (image, score, path) in enumerate(items):
            record = {
                "id": index,
                "image": [image],
                "conversations": [
                    {"from": "human", "value": "<image> What is your overall rating on the quality?"},
                    {"from": "gpt", "value": score if index % 2 else str(score)},
                ],
            }
            handle.write(json.dumps(record) + "\n")
            expected[str(index)] = Expected(score, None, None, path)
    return root / "vqr1.jsonl", expected


def build_q_align_json(root: Path, n: int = 10, seed: int = 11, lo: float = 1.0, hi: float = 5.0):
    """Q-Align JSON: id, image, conversations, gt_score."""
    items = _generic_items(root, n, seed, lo, hi)
    records, expected = [], {}
    for image, score, path in items:
        records.append(
            {
                "id": f"{image}->{score}",
                "image": image,
                "conversations": [
                    {"from": "human", "value": "How would you rate the aesthetics of this image?\n<|image|>"},
                    {"from": "gpt", "value": "The aesthetics of the image is good."},
                ],
                "gt_score": score,
            }
        )
        expected[image] = Expected(score, None, None, path)
    (root / "qalign.json").write_text(json.dumps(records))
    return root / "qalign.json", expected
