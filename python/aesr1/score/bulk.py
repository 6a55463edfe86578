"""Bulk scoring: `python -m aesr1.score INPUTS --model MODEL --output-dir DIR`, in one process or
many (`torchrun`, `accelerate launch`, `deepspeed`; one or several nodes).

Each process scores its contiguous block of the inputs (`aesr1.score.inputs.shard_range`) on its own
device (``cuda:LOCAL_RANK``, else the CPU) and appends each batch's rows, ``{"index": i, ...}`` plus
`ScoreResult.to_dict`, to its part file ``DIR/scores.jsonl.part-<rank>-of-<world>``, flushed and fsynced
(`aesr1.eval.cache.AppendLog`: line 1 holds the settings). A rerun skips what the parts hold and
refuses parts written with other settings; parts of a run with another number of processes are read
too, so a run may resume on more or fewer GPUs. Rank 0, once its block is done, follows the other
parts until every index is in one of them, then writes ``DIR/scores.jsonl`` in input order (a
temporary file renamed over it), the summary and the ``--filter``/``--keep-top`` list ``DIR/kept.txt``.

No collective is used: rank 0 polls the part files instead of waiting in a barrier, whose timeout
(30 minutes by default) a slow block can outlast. On several nodes the output folder must therefore
be shared (rank 0 reads every node's parts), as a training run's output directory is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aesr1.eval.cache import AppendLog, LogMismatchError, check_meta
from aesr1.jsonio import check_writable, json_safe, os_error_message, replacing, write_text
from aesr1.score.inputs import Entry, Launch, collect_inputs, inputs_sha256, shard_range

logger = logging.getLogger(__name__)

#: Seconds between two looks of rank 0 at the other processes' parts.
POLL_SECONDS = 0.2
#: Seconds between two "still waiting" lines of rank 0.
WAIT_REPORT_SECONDS = 60.0
#: Failures listed by name at the end (all are in the output's rows).
LISTED_FAILURES = 10

_PART = re.compile(r"\.part-(\d+)-of-(\d+)$")
_FILTER = re.compile(
    r"^\s*(score|std|median)\s*(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)
_COMPARE = {">=": np.greater_equal, ">": np.greater, "<=": np.less_equal, "<": np.less}


# ----------------------------------------------------------------------------------------------
# Command-line values


@dataclass(frozen=True)
class Filter:
    """``FIELD OP NUMBER`` on the output scale, e.g. ``score>=0.6``."""

    field: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.field}{self.op}{self.value:g}"


def parse_filter(text: str) -> Filter:
    """A `Filter` from ``score>=0.6`` (fields score, std, median; operators >=, >, <=, <)."""
    match = _FILTER.match(text)
    if match is None or not math.isfinite(float(match.group(3))):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not FIELD OP NUMBER (FIELD: score, std or median; OP: >=, >, <= or <), "
            "e.g. 'score>=0.6'"
        )
    return Filter(match.group(1), match.group(2), float(match.group(3)))


def parse_fraction(text: str) -> float:
    """A fraction in (0, 1] for --keep-top."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:  # also false for NaN
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in (0, 1], e.g. 0.1 for the top 10%")
    return value


#: The merged rows and the kept list, in --output-dir.
SCORES_FILE = "scores.jsonl"
KEPT_FILE = "kept.txt"


def add_bulk_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of bulk mode, which `--output-dir` switches on."""
    group = parser.add_argument_group(
        "bulk mode (--output-dir)",
        "Inputs may also be file lists (.txt), CSV files with an image column and WebDataset .tar "
        "shards. Under torchrun/accelerate launch each process scores its block of the inputs and "
        f"appends to DIR/{SCORES_FILE}.part-<rank>-of-<world>; a rerun resumes; rank 0 merges the "
        f"parts into DIR/{SCORES_FILE} and writes the kept images to DIR/{KEPT_FILE}.",
    )
    group.add_argument(
        "--output-dir", metavar="DIR",
        help=f"bulk mode: write all rows (JSONL, input order) to DIR/{SCORES_FILE}",
    )  # fmt: skip
    group.add_argument(
        "--filter", action="append", type=parse_filter, metavar="EXPR",
        help="keep the images whose row satisfies EXPR, e.g. 'score>=0.6' (on the output scale; "
        "fields score, std, median; repeat for several conditions, all must hold)",
    )  # fmt: skip
    group.add_argument(
        "--keep-top", type=parse_fraction, metavar="FRACTION",
        help="keep this fraction (0, 1] of the scored images with the highest scores (after --filter)",
    )  # fmt: skip
    group.add_argument(
        "--image-column", help="the image column of CSV inputs (default: image, path, file, ...)"
    )


# ----------------------------------------------------------------------------------------------
# Part files


def part_path(out: Path, rank: int, world: int) -> Path:
    return out.with_name(f"{out.name}.part-{rank}-of-{world}")


def find_parts(out: Path) -> list[tuple[Path, int, int]]:
    """(path, rank, world) of each part file of `out` on disk, sorted by world then rank."""
    found = []
    for path in out.parent.glob(f"{glob_escape(out.name)}.part-*-of-*"):
        match = _PART.search(path.name)
        if match and path.name[: match.start()] == out.name:
            rank, world = int(match.group(1)), int(match.group(2))
            if 0 <= rank < world:
                found.append((path, rank, world))
    return sorted(found, key=lambda item: (item[2], item[1]))


def glob_escape(name: str) -> str:
    return re.sub(r"([*?[])", r"[\1]", name)


def _remedy(out: Path) -> str:
    return f"use another --output-dir, or delete {out.name}.part-* in {out.parent} to score everything again"


def row_index(record: Any, names: Sequence[str]) -> int:
    """The input index of a part row, checked against the input list (ValueError/KeyError/TypeError)."""
    index = record["index"]
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(names):
        raise ValueError(f"index {index!r} is not an input index")
    if record.get("image") != names[index]:
        raise ValueError(f"row {index} names {record.get('image')!r}, input {index} is {names[index]!r}")
    return index


class PartFile(AppendLog):
    """This process's part file: the indices it already holds, and appending a batch's rows."""

    contents = "scores"
    kind = "aesr1 bulk-scoring part file"

    def __init__(self, path: Path, meta: dict, names: Sequence[str], out: Path):
        self.names = names
        self.done: set[int] = set()
        self.remedy = _remedy(out)
        super().__init__(path, meta)

    def _take(self, record: dict) -> None:
        self.done.add(row_index(record, self.names))


class PartReader:
    """Follows a part file that this process does not write: each `poll` returns the rows completed
    since the last one as (index, byte offset, byte length); a last line without its newline (still
    being written, or torn by a kill) waits for the next poll."""

    def __init__(self, path: Path, meta: dict, names: Sequence[str], out: Path):
        self.path, self.meta, self.names, self.out = path, meta, names, out
        self.offset = 0
        self.checked = False

    def poll(self) -> list[tuple[int, int, int]]:
        try:
            with open(self.path, "rb") as handle:
                return self._read(handle)
        except FileNotFoundError:  # that process has not started yet
            return []

    def _read(self, handle) -> list[tuple[int, int, int]]:
        rows: list[tuple[int, int, int]] = []
        handle.seek(self.offset)
        carry = b""
        while chunk := handle.read(1 << 24):
            data = carry + chunk
            end = data.rfind(b"\n") + 1
            carry = data[end:]
            position = self.offset
            for line in data[:end].split(b"\n")[:-1]:
                self._line(line, position, rows)
                position += len(line) + 1
            self.offset += end
        return rows

    def _line(self, line: bytes, position: int, rows: list) -> None:
        if not self.checked:
            try:
                stored = json.loads(line)["meta"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise LogMismatchError(
                    f"{self.path} is not an aesr1 bulk-scoring part file (no meta line)"
                ) from error
            check_meta(self.path, stored, self.meta, "scores", _remedy(self.out))
            self.checked = True
            return
        if not line.strip():
            return
        try:
            rows.append((row_index(json.loads(line), self.names), position, len(line) + 1))
        except (json.JSONDecodeError, TypeError, KeyError, ValueError) as error:
            logger.warning("skipping an unreadable row of %s at byte %d: %s", self.path, position, error)


class Coverage:
    """Which part holds each input index, and where (the first copy wins)."""

    def __init__(self, count: int):
        self.paths: list[Path] = []
        self.part = np.full(count, -1, dtype=np.int32)
        self.offset = np.zeros(count, dtype=np.int64)
        self.length = np.zeros(count, dtype=np.int64)
        self.count = 0

    def add(self, path: Path, rows: Iterable[tuple[int, int, int]]) -> None:
        rows = list(rows)
        if not rows:  # a part that holds nothing (yet) need not even exist when merging
            return
        if path not in self.paths:
            self.paths.append(path)
        number = self.paths.index(path)
        for index, offset, length in rows:
            if self.part[index] < 0:
                self.part[index], self.offset[index], self.length[index] = number, offset, length
                self.count += 1

    @property
    def complete(self) -> bool:
        return self.count == len(self.part)


# ----------------------------------------------------------------------------------------------
# Merging, keeping, summary


@dataclass
class Merged:
    """What the merged rows hold: per index, the score, std and median (NaN when None), and the
    failures by name."""

    score: np.ndarray
    std: np.ndarray
    median: np.ndarray
    completions: int = 0
    parse_failures: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    unscored: list[tuple[str, str]] = field(default_factory=list)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def merge(coverage: Coverage, out: Path) -> Merged:
    """Write every index's row to `out` in input order (temporary file + rename) and gather the
    numbers the summary and the kept list need."""
    count = len(coverage.part)
    merged = Merged(np.full(count, math.nan), np.full(count, math.nan), np.full(count, math.nan))
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(open(path, "rb")) for path in coverage.paths]
        stream = stack.enter_context(replacing(out))
        for index in range(count):
            handle = handles[coverage.part[index]]
            handle.seek(coverage.offset[index])
            line = handle.read(coverage.length[index])
            stream.write(line.decode("utf-8"))
            row = json.loads(line)
            merged.score[index] = _number(row.get("score"))
            merged.std[index] = _number(row.get("std"))
            merged.median[index] = _number(row.get("median"))
            merged.completions += int(row.get("samples") or 0)
            merged.parse_failures += int(row.get("parse_failures") or 0)
            if row.get("error"):
                merged.unreadable.append((row["image"], row["error"]))
            elif row.get("score") is None:
                merged.unscored.append((row["image"], row.get("note") or "no score"))
    return merged


def kept_indices(merged: Merged, filters: Sequence[Filter], keep_top: float | None) -> np.ndarray:
    """The indices, ascending, of the scored images that pass every filter and, with `keep_top`,
    are among the ceil(keep_top × passing) highest scores (ties: the earlier input)."""
    keep = ~np.isnan(merged.score)
    for condition in filters:
        values = getattr(merged, condition.field)
        keep &= ~np.isnan(values) & _COMPARE[condition.op](np.nan_to_num(values), condition.value)
    candidates = np.flatnonzero(keep)
    if keep_top is not None:
        # round first: 0.1 * 300 is 30.000000000000004 in floating point, and ceil would make it 31
        number = math.ceil(round(keep_top * len(candidates), 9))
        order = np.lexsort((candidates, -merged.score[candidates]))
        candidates = np.sort(candidates[order[:number]])
    return candidates


def _summary_lines(merged: Merged, out: Path) -> list[str]:
    count = len(merged.score)
    scored = int(np.count_nonzero(~np.isnan(merged.score)))
    lines = [
        f"{count} images: {scored} scored, {len(merged.unreadable)} skipped (bad image), "
        f"{merged.parse_failures} of {merged.completions} completions unparseable"
    ]
    for label, what, failures in (
        ("skipped", "skipped images", merged.unreadable),
        ("no score for", "images without a score", merged.unscored),
    ):
        for image, reason in failures[:LISTED_FAILURES]:
            lines.append(f"{label} {image}: {reason}")
        if len(failures) > LISTED_FAILURES:
            lines.append(f"... and {len(failures) - LISTED_FAILURES} more {what} (see their rows in {out})")
    return lines


# ----------------------------------------------------------------------------------------------
# The run


def scoring_meta(args: argparse.Namespace, entries: Sequence[Entry]) -> dict:
    """The settings a part's rows depend on (checked without loading a model; ValueError)."""
    from aesr1.score import resolve_settings
    from aesr1.score.provenance import model_revision, prompt_sha256

    preset, scale, settings = resolve_settings(
        args.mode, args.preset, args.scale, num_samples=args.samples, temperature=args.temperature,
        top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed,
    )  # fmt: skip
    model = Path(args.model)
    return {
        "mode": settings.mode,
        "preset": preset.name,
        "scale": scale.name,
        "num_samples": settings.num_samples,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "max_new_tokens": settings.max_new_tokens,
        "seed": settings.seed,
        "prompt_sha256": prompt_sha256(preset.prompt, preset.system_prompt),
        "revision": model_revision(model) if model.is_dir() else None,
        "inputs": len(entries),
        "inputs_sha256": inputs_sha256(entries),
    }


def process_device(device: str, launch: Launch) -> str:
    """``--device auto`` in a launch: this process's own GPU, ``cuda:LOCAL_RANK``, else the CPU."""
    if device != "auto":
        return device
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    if launch.local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK={launch.local_rank}, but this machine has {torch.cuda.device_count()} CUDA "
            "device(s): launch at most one process per GPU, or give --device"
        )
    torch.cuda.set_device(launch.local_rank)  # kernels and caches of this process stay on its GPU
    return f"cuda:{launch.local_rank}"


def default_scorer(args: argparse.Namespace, launch: Launch):
    from aesr1.score.__main__ import scorer_from_args

    args.device = process_device(args.device, launch)
    return scorer_from_args(args)


def _check_args(args: argparse.Namespace) -> None:
    if args.jsonl or args.csv:
        raise ValueError(f"--output-dir writes JSON lines to DIR/{SCORES_FILE}: leave out --jsonl/--csv")


def check_bulk_flags(args: argparse.Namespace) -> str | None:
    """Why the bulk-only flags given cannot be used (no --output-dir), else None."""
    if args.output_dir is not None:
        return None
    given = [flag for flag, value in (("--filter", args.filter), ("--keep-top", args.keep_top),
             ("--image-column", args.image_column)) if value is not None]  # fmt: skip
    if not given:
        return None
    return (
        f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only with --output-dir (bulk mode)"
    )


def score_block(
    scorer, entries: Sequence[Entry], todo: Sequence[int], part: PartFile, *, total: int, launch: Launch,
    progress: bool,
) -> None:  # fmt: skip
    """Score the indices `todo` batch by batch, appending each batch's rows to `part`."""
    from tqdm.auto import tqdm

    several = launch.world > 1
    bar = tqdm(
        total=total, initial=total - len(todo), unit="img", dynamic_ncols=True, disable=not progress,
        desc=f"rank {launch.rank}/{launch.world}" if several else f"score ({scorer.mode})",
        position=launch.local_rank if several else None,
    )  # fmt: skip
    try:
        for start in range(0, len(todo), scorer.batch_size):
            batch = todo[start : start + scorer.batch_size]
            results = scorer.score_batch([entries[i].load for i in batch], [entries[i].name for i in batch])
            part.append(json_safe({"index": i, **r.to_dict()}) for i, r in zip(batch, results, strict=True))
            bar.update(len(batch))
    finally:
        bar.close()


def wait_for_parts(coverage: Coverage, readers: list[PartReader], launch: Launch) -> None:
    """Rank 0: follow the parts until every input index is in one."""
    last_report = None
    while True:
        for reader in readers:
            coverage.add(reader.path, reader.poll())
        if coverage.complete:
            return
        if launch.world == 1:  # nobody else will write the missing rows
            missing = np.flatnonzero(coverage.part < 0)
            raise RuntimeError(f"{len(missing)} images have no row in the parts, e.g. index {missing[0]}")
        now = time.monotonic()
        if last_report is None or now - last_report >= WAIT_REPORT_SECONDS:
            print(
                f"rank 0: waiting for the other {launch.world - 1} processes "
                f"({coverage.count} of {len(coverage.part)} images in the parts)",
                file=sys.stderr,
            )
            last_report = now
        time.sleep(POLL_SECONDS)


def run(
    args: argparse.Namespace,
    make_scorer: Callable[[argparse.Namespace, Launch], Any] = default_scorer,
    launch: Launch | None = None,
) -> int:
    """Bulk mode of `python -m aesr1.score` (`args` from its parser, with --output-dir): the exit status."""
    try:
        launch = Launch.from_env() if launch is None else launch
        _check_args(args)
        entries = collect_inputs(args.images, recursive=args.recursive, image_column=args.image_column)
        meta = scoring_meta(args, entries)
        folder = Path(args.output_dir).expanduser()
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"--output-dir {str(folder)!r} is a file; give a folder")
        out = check_writable(folder) / SCORES_FILE
        names = [entry.name for entry in entries]
        part = PartFile(part_path(out, launch.rank, launch.world), meta, names, out)
        # Parts of a run with another number of processes: their rows count as done too.
        earlier = [
            PartReader(path, meta, names, out) for path, _, world in find_parts(out) if world != launch.world
        ]
        coverage = Coverage(len(entries))
        for reader in earlier:
            coverage.add(reader.path, reader.poll())
        block = shard_range(len(entries), launch.rank, launch.world)
        todo = [i for i in block if i not in part.done and coverage.part[i] < 0]
        scorer = make_scorer(args, launch) if todo else None
    except (ValueError, TypeError, FileNotFoundError) as error:  # InputError, LogMismatchError too
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {os_error_message(error)}", file=sys.stderr)
        return 1
    prefix = f"rank {launch.rank}/{launch.world}: " if launch.world > 1 else ""
    try:
        if scorer is not None:
            score_block(
                scorer, entries, todo, part, total=len(block), launch=launch, progress=not args.no_progress
            )
        print(
            f"{prefix}scored {len(todo)} images, {len(block) - len(todo)} of {len(block)} were already "
            f"in {part.path.name}{' or earlier parts' if earlier else ''}",
            file=sys.stderr,
        )
        if launch.rank != 0:
            return 0
        readers = earlier + [
            PartReader(part_path(out, rank, launch.world), meta, names, out) for rank in range(launch.world)
        ]
        wait_for_parts(coverage, readers, launch)
        merged = merge(coverage, out)
        for line in _summary_lines(merged, out):
            print(line, file=sys.stderr)
        print(f"wrote {out} ({len(entries)} rows in input order)", file=sys.stderr)
        if args.filter or args.keep_top:
            kept = kept_indices(merged, args.filter or [], args.keep_top)
            target = out.parent / KEPT_FILE
            write_text(target, "".join(names[i] + "\n" for i in kept))
            rules = [str(f) for f in args.filter or []]
            if args.keep_top:
                rules.append(f"top {args.keep_top:g}")
            scored = int(np.count_nonzero(~np.isnan(merged.score)))
            print(
                f"kept {len(kept)} of {scored} scored images ({', '.join(rules)}): {target}", file=sys.stderr
            )
    except LogMismatchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {os_error_message(error)}", file=sys.stderr)
        return 1
    return 0


__all__ = [
    "Coverage", "Filter", "PartFile", "PartReader", "add_bulk_arguments", "check_bulk_flags",
    "find_parts", "kept_indices", "merge", "parse_filter", "parse_fraction", "part_path", "run",
    "scoring_meta",
]  # fmt: skip
