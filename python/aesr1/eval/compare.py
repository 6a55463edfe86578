"""Several evaluation results side by side (the paper's tables compare methods row by row)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from aesr1.eval.results import EvalResult
from aesr1.eval.table import table1


def compare_results(paths: Sequence[str | Path]) -> str:
    """Markdown table in Table 1 layout with one row per result file (results.json of an evaluation, or
    its output directory). Models evaluated on different dataset sets get '—' where they lack one."""
    if not paths:
        raise ValueError("paths: give at least one result file")
    results = []
    for path in paths:
        path = Path(path)
        results.append(EvalResult.load_json(path / "results.json" if path.is_dir() else path))
    return table1(results)
