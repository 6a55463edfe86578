"""Files people bring: plain CSV / JSONL (``image,score[,std]``) with a stated score range, and the
training-data formats of the released Aes-R1 (``messages`` + ``images``), VisualQuality-R1 (JSONL with
``conversations``) and Q-Align (``image`` + ``gt_score``) code.

The root is the annotation file itself; relative image paths are resolved against ``image_root``
(default: the file's folder). A ``split`` field ("train" / "val" / "test") in the records is used as
the split; otherwise the seeded 9:1 split applies (``split="all"`` takes the whole file).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aesr1.data.files import ImageResolver
from aesr1.data.formats.base import (
    Annotation,
    ReadResult,
    csv_header,
    optional_float,
    parse_float,
    read_csv_rows,
    require_columns,
)
from aesr1.data.normalization import ScoreRange, parse_score_range

_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "validation": "val", "test": "test"}


def _score_range(dataset: str, options: dict[str, Any], default: ScoreRange | None) -> ScoreRange:
    value = options.get("score_range", default)
    if value is None:
        raise ValueError(
            f"{dataset}: score_range must be stated for this format (e.g. score_range=(1, 10), or "
            f"'?range=1..10' in a --data spec) so scores can be normalised to [0, 1]"
        )
    return parse_score_range(value)


def _resolver(path: Path, options: dict[str, Any]) -> ImageResolver:
    return ImageResolver(path.parent, [""], options.get("image_root") or options.get("image_dir"))


def _row_split(dataset: str, value: Any, where: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    name = _SPLIT_NAMES.get(str(value).strip().lower())
    if name is None:
        raise ValueError(f"{dataset}: split {value!r} at {where} is not one of train/val/test")
    return name


def _id_of(record: dict, default: str) -> str:
    value = record.get("id")
    return default if value is None or str(value).strip() == "" else str(value)


def _unique_id(seen: dict[str, int], candidate: str) -> str:
    """Ids must be unique (the prediction cache is keyed by them); repeated images get '#2', '#3'..."""
    seen[candidate] = seen.get(candidate, 0) + 1
    return candidate if seen[candidate] == 1 else f"{candidate}#{seen[candidate]}"


def _records(dataset: str, path: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) from a JSON list or a JSONL file."""
    text = path.read_text(encoding="utf-8-sig")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{dataset}: {path} is not valid JSON: {error}") from error
        for index, record in enumerate(records):
            yield f"{path}[{index}]", record
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{number}", json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{dataset}: {path}:{number} is not valid JSON: {error}") from error


def _first_image(dataset: str, value: Any, where: str) -> str:
    if isinstance(value, list):
        value = value[0] if value else None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{dataset}: record {where} has no image path")
    return value


def _last_answer(text: str) -> str | None:
    """Content of the last ``<answer>…</answer>`` block, as ``re.findall(r"<answer>(.*?)</answer>")``
    would find it; `str.find` keeps it linear in the text (the lazy regex is quadratic when opening
    tags repeat without a closing one)."""
    last, position = None, 0
    while (start := text.find("<answer>", position)) != -1:
        end = text.find("</answer>", start + len("<answer>"))
        if end == -1:
            break
        last, position = text[start + len("<answer>") : end], end + len("</answer>")
    return last


def _number_in(text: Any, where: str) -> float:
    """A score from an answer: a number, or text whose last <answer>...</answer> (or itself) is one."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    if isinstance(text, list):  # content parts [{"type": "text", "text": ...}]
        text = "".join(part.get("text", "") for part in text if isinstance(part, dict))
    if not isinstance(text, str):
        raise ValueError(f"answer at {where} is not text: {text!r}")
    answer = _last_answer(text)
    return parse_float((text if answer is None else answer).strip(), where)


def read_table(root: Path, split: str, options: dict[str, Any], dataset: str = "csv") -> ReadResult:
    """CSV with a header (``image,score[,std][,id][,split]``) or JSONL objects with the same keys."""
    score_range = _score_range(dataset, options, None)
    resolve = _resolver(root, options)
    if dataset == "csv":
        require_columns(dataset, root, csv_header(root), ("image", "score"))
        rows: Iterator[tuple[str, Any]] = ((f"{root}:{line}", row) for line, row in read_csv_rows(root))
    else:
        rows = _records(dataset, root)
    seen: dict[str, int] = {}
    annotations = []
    for where, row in rows:
        if not isinstance(row, dict) or "image" not in row or "score" not in row:
            raise ValueError(f"{dataset}: record {where} needs the keys 'image' and 'score'")
        image = _first_image(dataset, row["image"], where)
        annotations.append(
            Annotation(
                id=_unique_id(seen, _id_of(row, image)),
                image=resolve(image),
                score=score_range.normalize(parse_float(row["score"], where), f"at {where}"),
                std=score_range.normalize_std(optional_float(row.get("std"))),
                split=_row_split(dataset, row.get("split"), where),
            )
        )
    return ReadResult(annotations)


def read_csv_file(root: Path, split: str, options: dict[str, Any]) -> ReadResult:
    return read_table(root, split, options, "csv")


def read_jsonl_file(root: Path, split: str, options: dict[str, Any]) -> ReadResult:
    return read_table(root, split, options, "jsonl")


def read_aesr1(root: Path, split: str, options: dict[str, Any]) -> ReadResult:
    """Released Aes-R1 training JSON: ``[{"messages": [{"role": "user", ...}, {"role": "assistant",
    "content": "0.25"}], "images": "path" | ["path"]}]``; the score is the last assistant message (its
    ``<answer>`` when tagged), on [0, 1] unless score_range says otherwise."""
    score_range = _score_range("aesr1", options, ScoreRange(0.0, 1.0))
    resolve = _resolver(root, options)
    seen: dict[str, int] = {}
    annotations = []
    for where, record in _records("aesr1", root):
        if not isinstance(record, dict) or "messages" not in record:
            raise ValueError(f"aesr1: record {where} has no 'messages'")
        answers = [
            m.get("content")
            for m in record["messages"]
            if isinstance(m, dict) and m.get("role") == "assistant"
        ]
        if not answers:
            raise ValueError(f"aesr1: record {where} has no assistant message holding the score")
        image = _first_image("aesr1", record.get("images"), where)
        annotations.append(
            Annotation(
                id=_unique_id(seen, _id_of(record, image)),
                image=resolve(image),
                score=score_range.normalize(_number_in(answers[-1], where), f"at {where}"),
                split=_row_split("aesr1", record.get("split"), where),
            )
        )
    return ReadResult(annotations)


def read_visualquality_r1(root: Path, split: str, options: dict[str, Any]) -> ReadResult:
    """VisualQuality-R1 / VLM-R1 JSONL: ``{"image": "path" | ["path"], "conversations": [{"from":
    "human", ...}, {"from": "gpt", "value": 3.42}]}``; the score is the last ``gpt`` turn, on 1-5 (the
    VisualQuality-R1 prompt's scale) unless score_range says otherwise."""
    score_range = _score_range("visualquality-r1", options, ScoreRange(1.0, 5.0))
    resolve = _resolver(root, options)
    seen: dict[str, int] = {}
    annotations = []
    for where, record in _records("visualquality-r1", root):
        turns = record.get("conversations") if isinstance(record, dict) else None
        if not isinstance(turns, list):
            raise ValueError(f"visualquality-r1: record {where} has no 'conversations' list")
        answers = [
            t.get("value") for t in turns if isinstance(t, dict) and t.get("from") in ("gpt", "assistant")
        ]
        if not answers:
            raise ValueError(f"visualquality-r1: record {where} has no 'gpt' turn holding the score")
        image = _first_image("visualquality-r1", record.get("image"), where)
        annotations.append(
            Annotation(
                id=_unique_id(seen, _id_of(record, image)),
                image=resolve(image),
                score=score_range.normalize(_number_in(answers[-1], where), f"at {where}"),
                split=_row_split("visualquality-r1", record.get("split"), where),
            )
        )
    return ReadResult(annotations)


def read_q_align(root: Path, split: str, options: dict[str, Any]) -> ReadResult:
    """Q-Align JSON: ``[{"id": ..., "image": "path", "conversations": [...], "gt_score": 3.1}]``;
    Q-Align files use each dataset's own scale, so score_range must be stated."""
    score_range = _score_range("q-align", options, None)
    resolve = _resolver(root, options)
    seen: dict[str, int] = {}
    annotations = []
    for where, record in _records("q-align", root):
        if not isinstance(record, dict) or "gt_score" not in record:
            raise ValueError(f"q-align: record {where} has no 'gt_score'")
        image = _first_image("q-align", record.get("image"), where)
        annotations.append(
            Annotation(
                id=_unique_id(seen, image),
                image=resolve(image),
                score=score_range.normalize(parse_float(record["gt_score"], where), f"at {where}"),
                std=score_range.normalize_std(optional_float(record.get("std"))),
                split=_row_split("q-align", record.get("split"), where),
            )
        )
    return ReadResult(annotations)
