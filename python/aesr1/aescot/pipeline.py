"""The AesCoT build: balanced sampling, expert critiques, filters, append-as-you-go output, resume.

D_AesCoT = F(D_CoT) = {(P, I_i, c_i, s_i) | ||E_i|| = 0} (paper §3.2) with
E_i = (e_leak, e_align, e_fact): an item is kept only when its critique passes the format check, the
programmatic leakage filter (e_leak) and, when a judge is given, the consistency (e_align) and
factual (e_fact) checks. Sampling is balanced over the bins of Appendix E.2: items are drawn per bin
in a seeded order and a bin stops once it holds its target of kept items.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aesr1.aescot.chat_client import ChatFatalError
from aesr1.aescot.experts import Critique, Expert
from aesr1.aescot.filters import FilterVerdict, check_format, check_leakage, clean_critique
from aesr1.aescot.judges import Judge, JudgeParseError
from aesr1.aescot.report import BinReport, BuildReport
from aesr1.aescot.store import JsonlAppender, OutputLock, OutputPaths, ResumeState
from aesr1.data.records import ScoredImage
from aesr1.prompts import BINS, SCORING_PROMPT, format_completion, score_bin

#: AesCoT-3K composition (Appendix E.2, Table 6a): 1000 items per bin.
DEFAULT_PER_BIN = 1000


@dataclass
class BuildConfig:
    """Settings of `build_dataset`.

    Attributes:
        per_bin: target of kept items per bin, one number for all bins or a mapping
            ``{"bad": ..., "fair": ..., "good": ...}`` (missing bins get 0). Default 1000 (AesCoT-3K).
        seed: seeds the per-bin sampling order (and nothing else: experts seed themselves).
        concurrency: items in flight at once (each uses one expert request, then one judge request).
        overwrite: delete earlier output, rejects, report and meta files instead of resuming.
        retry_failed: on resume, retry items whose last attempt ended in an expert/judge error.
        max_attempts: cap on items sent to the expert in this run (None = no cap), a cost guard.
        max_consecutive_errors: stop the run when this many items in a row end in an error.
        min_critique_chars: shorter critiques are dropped (reason ``format``).
        max_critique_chars: longer critiques are dropped (None = no limit).
        english_only: drop critiques whose letters are mostly non-ASCII (Appendix B asks for English).
        strip_expert_think: remove a reasoning model's leading ``<think>...</think>`` before filtering.
        progress: show a progress bar (tqdm) on stderr.
    """

    per_bin: int | Mapping[str, int] = DEFAULT_PER_BIN
    seed: int = 0
    concurrency: int = 8
    overwrite: bool = False
    retry_failed: bool = True
    max_attempts: int | None = None
    max_consecutive_errors: int = 50
    min_critique_chars: int = 80
    max_critique_chars: int | None = None
    english_only: bool = True
    strip_expert_think: bool = True
    progress: bool = True
    targets: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.targets = _targets(self.per_bin)
        for name in ("seed", "concurrency", "max_consecutive_errors", "min_critique_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an integer, got {value!r}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.max_consecutive_errors < 1:
            raise ValueError(f"max_consecutive_errors must be >= 1, got {self.max_consecutive_errors}")
        if self.max_attempts is not None and self.max_attempts < 0:
            raise ValueError(f"max_attempts must be >= 0 or None, got {self.max_attempts}")
        if self.max_critique_chars is not None and self.max_critique_chars < self.min_critique_chars:
            raise ValueError("max_critique_chars must be >= min_critique_chars")


def _targets(per_bin: int | Mapping[str, int]) -> dict[str, int]:
    if isinstance(per_bin, Mapping):
        unknown = set(per_bin) - set(BINS)
        if unknown:
            raise ValueError(f"per_bin has unknown bins {sorted(unknown)}; the bins are {list(BINS)}")
        targets = {name: per_bin.get(name, 0) for name in BINS}
    else:
        targets = dict.fromkeys(BINS, per_bin)
    for name, value in targets.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"per_bin[{name!r}] must be an integer >= 0, got {value!r}")
    return targets


def record_id(item: ScoredImage) -> str:
    """The output `id`: unique across sources."""
    return f"{item.source}:{item.id}"


def sft_record(item: ScoredImage, critique: str, filters: dict[str, Any]) -> dict[str, Any]:
    """One line of the output JSONL (interface 2), ready for stage-1 SFT."""
    score = float(item.score)
    return {
        "id": record_id(item),
        "source": item.source,
        "image": os.path.abspath(item.image),
        "score": score,
        "bin": score_bin(score),
        "prompt": SCORING_PROMPT,
        "critique": critique,
        "completion": format_completion(critique, score),
        "filters": filters,
    }


def _reject_record(
    item: ScoredImage, reason: str, detail: str, *, final: bool, critique: str | None, filters: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": record_id(item),
        "source": item.source,
        "image": os.path.abspath(item.image),
        "score": float(item.score),
        "bin": score_bin(float(item.score)),
        "final": final,
        "reason": reason,
        "detail": detail,
        "critique": critique,
        "filters": filters,
        "time": time.time(),
    }


@dataclass
class _Outcome:
    status: str  # "kept" | "dropped" | "error"
    record: dict[str, Any]

    @property
    def reason(self) -> str | None:
        return self.record.get("reason")


def _validate_items(items: Sequence[ScoredImage]) -> None:
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise TypeError(f"items must be a sequence of ScoredImage, got {type(items).__name__}")
    if not items:
        raise ValueError("items is empty: nothing to build AesCoT data from")
    seen: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, ScoredImage):
            raise TypeError(f"items[{index}] must be a ScoredImage, got {type(item).__name__}")
        try:
            score_bin(float(item.score))
        except (TypeError, ValueError) as error:
            raise ValueError(f"items[{index}] ({item.source}:{item.id}): {error}") from error
        rid = record_id(item)
        if rid in seen:
            raise ValueError(f"items holds the id {rid!r} twice; ids must be unique per source")
        seen.add(rid)


class _BinScheduler:
    """Hands out items bin by bin (round robin) while ``kept + in_flight < target``.

    Keeping in-flight items within the remaining need means a bin never ends above its target and no
    request is spent on an item that could not be kept; a failed item frees its slot for the next.
    """

    def __init__(
        self,
        queues: dict[str, list[ScoredImage]],
        targets: dict[str, int],
        kept: Counter,
        max_attempts: int | None,
    ) -> None:
        self.queues = {name: list(reversed(queue)) for name, queue in queues.items()}  # pop() from the end
        self.targets = targets
        self.kept = kept
        self.in_flight: Counter[str] = Counter()
        self.attempts_left = max_attempts
        self._turn = 0
        self._condition = asyncio.Condition()

    def _pick(self) -> str | None:
        names = list(self.queues)
        for offset in range(len(names)):
            name = names[(self._turn + offset) % len(names)]
            if self.queues[name] and self.kept[name] + self.in_flight[name] < self.targets[name]:
                self._turn = (self._turn + offset + 1) % len(names)
                return name
        return None

    async def next(self) -> ScoredImage | None:
        async with self._condition:
            while True:
                if self.attempts_left == 0:
                    return None
                name = self._pick()
                if name is not None:
                    self.in_flight[name] += 1
                    if self.attempts_left is not None:
                        self.attempts_left -= 1
                    return self.queues[name].pop()
                if not any(self.in_flight.values()):
                    return None
                # An in-flight item may fail and free a slot: wait for a completion.
                await self._condition.wait()

    async def done(self, item: ScoredImage, kept: bool) -> None:
        name = score_bin(float(item.score))
        async with self._condition:
            self.in_flight[name] -= 1
            if kept:
                self.kept[name] += 1
            self._condition.notify_all()

    def untried(self) -> dict[str, int]:
        return {name: len(queue) for name, queue in self.queues.items()}


class _Builder:
    """Runs one item through expert, filters and judge; counts this run's outcomes.

    `cached_critiques` holds critiques of items whose earlier attempt failed only at the judge: the
    retry reuses them instead of paying the expert again (they are filtered again all the same).
    """

    def __init__(self, expert, judge, config: BuildConfig, cached_critiques: dict[str, str]) -> None:
        self.expert = expert
        self.judge = judge
        self.config = config
        self.cached_critiques = cached_critiques
        self.processed = 0
        self.consecutive_errors = 0
        self.last_error = ""
        self.run_counts: Counter[str] = Counter()

    async def process(self, item: ScoredImage) -> _Outcome:
        filters: dict[str, Any] = {}
        if not os.path.isfile(item.image):
            return self._drop(item, "missing_image", f"no file at {item.image}", None, filters)
        cached = self.cached_critiques.pop(record_id(item), None)
        if cached is not None:
            answer = Critique(cached, "stop")
        else:
            try:
                answer = await self.expert.critique(item)
            except ChatFatalError:
                raise
            except Exception as error:  # any failure of one item is recorded and retried on the next run
                return self._error(item, "expert_error", f"{type(error).__name__}: {error}", None, filters)
        critique = clean_critique(answer.text, strip_think=self.config.strip_expert_think)
        checks: list[tuple[str, str, FilterVerdict]] = [
            (
                "format",
                "format",
                check_format(
                    critique,
                    answer.finish_reason,
                    min_chars=self.config.min_critique_chars,
                    max_chars=self.config.max_critique_chars,
                    english_only=self.config.english_only,
                ),
            ),
            ("leakage", "leakage", check_leakage(critique)),
        ]
        for name, _, verdict in checks:
            filters[name] = verdict.to_json()
        for _, reason, verdict in checks:
            if not verdict.passed:
                return self._drop(item, reason, verdict.reason, critique, filters)
        if self.judge is not None:
            try:
                verdict = await self.judge.judge(item, critique)
            except ChatFatalError:
                raise
            except JudgeParseError as error:
                filters["judge"] = {"passed": False, "reason": str(error)}
                return self._drop(item, "judge_unparseable", str(error), critique, filters)
            except Exception as error:
                return self._error(item, "judge_error", f"{type(error).__name__}: {error}", critique, filters)
            filters["consistency"] = FilterVerdict(verdict.consistent, verdict.consistency_reason).to_json()
            filters["factual"] = FilterVerdict(
                verdict.factually_accurate, "; ".join(verdict.factual_errors)
            ).to_json()
            if not verdict.consistent:
                return self._drop(item, "inconsistent", verdict.consistency_reason, critique, filters)
            if not verdict.factually_accurate:
                return self._drop(item, "factual_error", "; ".join(verdict.factual_errors), critique, filters)
        return _Outcome("kept", sft_record(item, critique, filters))

    def _drop(self, item, reason, detail, critique, filters) -> _Outcome:
        return _Outcome(
            "dropped", _reject_record(item, reason, detail, final=True, critique=critique, filters=filters)
        )

    def _error(self, item, reason, detail, critique, filters) -> _Outcome:
        return _Outcome(
            "error", _reject_record(item, reason, detail, final=False, critique=critique, filters=filters)
        )


def _check_meta(paths: OutputPaths, meta: dict[str, Any], resuming: bool) -> list[str]:
    notes = []
    if resuming and paths.meta.exists():
        try:
            previous = json.loads(paths.meta.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            previous = {}
        for key in ("expert", "judge", "seed"):
            if key in previous and previous[key] != meta[key]:
                notes.append(
                    f"resuming {paths.out} written with {key}={previous[key]!r}, now {key}={meta[key]!r}"
                )
    if not (resuming and paths.meta.exists()):
        paths.meta.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return notes


def _make_report(paths, expert, judge, targets, items, untried, run_info, notes) -> BuildReport:
    state = ResumeState.load(paths)
    bins = {name: BinReport(target=targets[name]) for name in BINS}
    for item in items:
        bins[score_bin(float(item.score))].available += 1
    for record in state.kept.values():
        bins[record["bin"]].kept += 1
    for record in state.dropped.values():
        counts = bins[record["bin"]].dropped
        counts[record["reason"]] = counts.get(record["reason"], 0) + 1
    for record in state.errors.values():
        counts = bins[record["bin"]].errors
        counts[record["reason"]] = counts.get(record["reason"], 0) + 1
    for name, count in untried.items():
        bins[name].untried = count
    report = BuildReport(
        out=str(paths.out),
        expert=expert.name,
        judge=None if judge is None else judge.name,
        bins=bins,
        this_run=run_info,
        warnings=list(notes),
    )
    for name, b in bins.items():
        if b.shortfall and b.untried == 0:
            report.warnings.append(
                f"bin {name!r} ran out of items {b.shortfall} short of its target of {b.target}"
            )
    return report


async def abuild_dataset(
    items: Sequence[ScoredImage],
    expert: Expert,
    out_path: str | Path,
    *,
    per_bin: int | Mapping[str, int] | None = None,
    judge: Judge | None = None,
    config: BuildConfig | None = None,
    **overrides: Any,
) -> BuildReport:
    """Async form of `build_dataset` (for callers that already run an event loop)."""
    if per_bin is not None:
        overrides["per_bin"] = per_bin
    # `replace` re-validates and never mutates the caller's config.
    config = replace(config or BuildConfig(), **overrides)
    if not (hasattr(expert, "critique") and asyncio.iscoroutinefunction(expert.critique)):
        raise TypeError(f"expert must provide 'async def critique(item)', got {type(expert).__name__}")
    if judge is not None and not (hasattr(judge, "judge") and asyncio.iscoroutinefunction(judge.judge)):
        raise TypeError(
            f"judge must provide 'async def judge(item, critique)' or be None, got {type(judge).__name__}"
        )
    _validate_items(items)
    expert.validate(items)
    if judge is not None:
        judge.validate(items)

    paths = OutputPaths.for_output(out_path)
    if paths.out.suffix.lower() != ".jsonl":
        raise ValueError(f"out_path must be a .jsonl file, got {str(paths.out)!r}")
    paths.out.parent.mkdir(parents=True, exist_ok=True)
    with OutputLock(paths.lock):
        return await _build_locked(items, expert, judge, paths, config)


async def _build_locked(items, expert, judge, paths: OutputPaths, config: BuildConfig) -> BuildReport:
    if config.overwrite:
        for path in paths.existing():
            path.unlink()
    resuming = paths.out.exists() or paths.rejects.exists()
    meta = {
        "expert": expert.name,
        "judge": None if judge is None else judge.name,
        "seed": config.seed,
        "targets": config.targets,
        "prompt": SCORING_PROMPT,
        "created": time.time(),
    }
    notes = _check_meta(paths, meta, resuming)
    for note in notes:
        warnings.warn(note, stacklevel=3)

    state = ResumeState.load(paths)
    finished = state.finished(config.retry_failed)
    kept = Counter(record["bin"] for record in state.kept.values())
    queues: dict[str, list[ScoredImage]] = {}
    for name in BINS:
        # Sort first so the order depends on the seed only, not on how the loader listed the items;
        # shuffle the whole bin and only then skip finished items, so a resumed run walks the same
        # order (and ends with the same items) as an uninterrupted one.
        members = sorted((it for it in items if score_bin(float(it.score)) == name), key=record_id)
        random.Random(f"aescot/{config.seed}/{name}").shuffle(members)
        queues[name] = [it for it in members if record_id(it) not in finished]
    scheduler = _BinScheduler(queues, config.targets, kept, config.max_attempts)
    cached = {
        item_id: record["critique"]
        for item_id, record in state.errors.items()
        if record.get("reason") == "judge_error" and record.get("critique")
    }
    builder = _Builder(expert, judge, config, cached)
    expected = sum(min(config.targets[n], kept[n] + len(queues[n])) for n in BINS)
    started = time.monotonic()

    from tqdm.auto import tqdm

    bar = tqdm(
        total=expected,
        initial=min(expected, sum(min(kept[n], config.targets[n]) for n in BINS)),
        desc="aescot",
        unit="kept",
        disable=not config.progress,
        dynamic_ncols=True,
    )

    async def worker(out_file: JsonlAppender, rejects_file: JsonlAppender) -> None:
        while (item := await scheduler.next()) is not None:
            try:
                outcome = await builder.process(item)
            except BaseException:
                await scheduler.done(item, kept=False)
                raise
            if outcome.status == "kept":
                out_file.append(outcome.record)
            else:
                rejects_file.append(outcome.record)
            builder.processed += 1
            builder.run_counts[outcome.status if outcome.status == "kept" else outcome.reason] += 1
            await scheduler.done(item, kept=outcome.status == "kept")
            if outcome.status == "kept":
                bar.update(1)
            if outcome.status == "error":
                builder.consecutive_errors += 1
                builder.last_error = f"{outcome.reason}: {outcome.record['detail']}"
                if builder.consecutive_errors >= config.max_consecutive_errors:
                    raise RuntimeError(
                        f"{builder.consecutive_errors} items in a row failed; stopping (rerun to resume). "
                        f"Last error: {builder.last_error}"
                    )
            else:
                builder.consecutive_errors = 0
            bar.set_postfix({k: v for k, v in builder.run_counts.items() if k != "kept"}, refresh=False)

    try:
        with JsonlAppender(paths.out) as out_file, JsonlAppender(paths.rejects) as rejects_file:
            tasks = [asyncio.create_task(worker(out_file, rejects_file)) for _ in range(config.concurrency)]
            try:
                done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()
    finally:
        bar.close()
        endpoint_stats: Counter[str] = Counter()
        clients = {
            id(c): c
            for c in (getattr(expert, "client", None), getattr(judge, "client", None))
            if c is not None
        }
        for client in clients.values():
            endpoint_stats.update(client.stats)
        run_info = {
            "processed": builder.processed,
            "outcomes": dict(builder.run_counts),
            "elapsed_s": round(time.monotonic() - started, 3),
            "endpoint": dict(endpoint_stats),
        }
        report = _make_report(
            paths, expert, judge, config.targets, items, scheduler.untried(), run_info, notes
        )
        report.save(paths.report)
    return report


def build_dataset(
    items: Sequence[ScoredImage],
    expert: Expert,
    out_path: str | Path,
    *,
    per_bin: int | Mapping[str, int] | None = None,
    judge: Judge | None = None,
    config: BuildConfig | None = None,
    close: bool = True,
    **overrides: Any,
) -> BuildReport:
    """Build AesCoT data from `items` into `out_path` (JSONL, interface 2) and return the report.

    Resumes automatically when `out_path` (or its rejects file) exists: finished items are skipped,
    kept items count towards the targets. `per_bin` and `overrides` set `BuildConfig` fields.
    The report is also saved next to the output (``<stem>.report.json``). With `close`, the expert's
    and judge's connections are closed at the end.
    """

    async def run() -> BuildReport:
        try:
            return await abuild_dataset(
                items, expert, out_path, per_bin=per_bin, judge=judge, config=config, **overrides
            )
        finally:
            if close:
                for party in (expert, judge):
                    if hasattr(party, "aclose"):
                        await party.aclose()

    return asyncio.run(run())
