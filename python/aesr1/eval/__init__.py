"""Evaluation on the IAA benchmarks: `python -m aesr1.eval` and `run_evaluation` in Python.

Batched generation with the paper's scoring prompt, a resumable JSONL prediction cache, PLCC/SRCC from
the native `aesr1.metrics` (optionally after the 4-parameter logistic fit), Table 1 layout in Markdown
and JSON, distribution and scatter plots, and side-by-side comparison of result files.
"""

from aesr1.eval.cache import Prediction, PredictionCache
from aesr1.eval.compare import compare_results
from aesr1.eval.config import EvalConfig
from aesr1.eval.correlation import Correlations, correlations, fit_logistic, logistic4
from aesr1.eval.predictor import ModelPredictor, Predictor
from aesr1.eval.results import DatasetResult, EvalResult
from aesr1.eval.runner import run_evaluation, summarise
from aesr1.eval.table import details, report_markdown, table1

__all__ = [
    "Correlations",
    "DatasetResult",
    "EvalConfig",
    "EvalResult",
    "ModelPredictor",
    "Prediction",
    "PredictionCache",
    "Predictor",
    "compare_results",
    "correlations",
    "details",
    "fit_logistic",
    "logistic4",
    "report_markdown",
    "run_evaluation",
    "summarise",
    "table1",
]
