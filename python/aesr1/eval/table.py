"""Markdown tables: the paper's Table 1 layout (PLCC/SRCC per dataset and the average), the per-dataset
details (counts and parse failures), and several results side by side (`--compare`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from aesr1.eval.results import EvalResult, table_order

LOGISTIC_MARK = "†"
LOGISTIC_NOTE = f"{LOGISTIC_MARK} PLCC after the 4-parameter logistic fit (VQEG); raw PLCC in the JSON."


def _number(value: float) -> str:
    return "NaN" if value is None or math.isnan(value) else f"{value:.4f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table1(results: Sequence[EvalResult]) -> str:
    """Table 1 layout: one row per model; per dataset PLCC and SRCC, then the average."""
    if not results:
        raise ValueError("results must hold at least one evaluation")
    names: dict[str, str] = {}
    titles: dict[str, str] = {}
    for result in results:
        for label, dataset in result.datasets.items():
            names.setdefault(label, dataset.name)
            titles.setdefault(label, dataset.title if label == dataset.name else label)
    labels = table_order(names, names)
    header = ["Model"]
    for label in labels:
        header += [f"{titles[label]} PLCC", f"{titles[label]} SRCC"]
    header += ["Average PLCC", "Average SRCC"]
    lines = [_row(header), _row(["---"] + ["---:"] * (len(header) - 1))]
    flagged = False
    for result in results:
        mark = LOGISTIC_MARK if result.plcc_mode == "logistic" else ""
        flagged |= bool(mark)
        cells = [result.model]
        for label in labels:
            dataset = result.datasets.get(label)
            if dataset is None:
                cells += ["—", "—"]
            else:
                cells += [_number(result.table_plcc(dataset)) + mark, _number(dataset.srcc)]
        average = result.average
        if any(label not in result.datasets for label in labels):
            cells += ["—", "—"]  # an average over other datasets would not be comparable
        else:
            cells += [_number(average["plcc"]) + mark, _number(average["srcc"])]
        lines.append(_row(cells))
    if flagged:
        lines += ["", LOGISTIC_NOTE]
    return "\n".join(lines)


def details(result: EvalResult) -> str:
    """Per-dataset counts (images, parse failures, skipped) and all correlations of one result."""
    header = [
        "Dataset", "Images", "Scored", "Parse failures", "Unscored images", "Skipped (load)",
        "Unreadable (eval)", "PLCC", f"PLCC{LOGISTIC_MARK}", "SRCC", "KRCC",
    ]  # fmt: skip
    lines = [_row(header), _row(["---"] + ["---:"] * (len(header) - 1))]
    for d in result.ordered():
        lines.append(
            _row(
                [
                    d.title if d.label == d.name else d.label,
                    str(d.images),
                    str(d.scored),
                    f"{d.parse_failures}/{d.completions}",
                    str(d.unscored),
                    str(d.skipped_at_load),
                    str(d.unreadable_at_eval),
                    _number(d.plcc),
                    _number(d.plcc_logistic),
                    _number(d.srcc),
                    _number(d.krcc),
                ]
            )
        )
    notes = [f"- {d.label}: {d.note}" for d in result.ordered() if d.note]
    return "\n".join(lines + ([""] + notes if notes else []))


def report_markdown(result: EvalResult) -> str:
    """The Markdown saved as results.md: Table 1 layout, then the details."""
    mode = "after the 4-parameter logistic fit" if result.plcc_mode == "logistic" else "raw (no fit)"
    return "\n".join(
        [
            f"# Evaluation of {result.model}",
            "",
            f"PLCC and SRCC on the test splits; PLCC {mode}.",
            "",
            table1([result]),
            "",
            "## Details",
            "",
            details(result),
            "",
        ]
    )
