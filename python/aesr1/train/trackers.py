"""Experiment trackers (`report_to`): W&B, MLflow and Trackio through accelerate's tracker classes.

Both stages log through `aesr1.train.tracking.MetricsLogger`, which writes the JSONL file and
TensorBoard itself and hands every record to the trackers opened here, so a metric has the same
name everywhere: `<stage>/<metric>` (`sft/loss`, `rapo/reward/rank`, `rapo/eval/plcc`). trl's own
`report_to` callbacks are not used for the cold start because they name the same metric differently
per service (`train/loss` in TensorBoard and W&B, `loss` in MLflow).

One tracker run spans the whole pipeline: the resolved config is stored once when it opens, the
held-out table is logged when the pipeline ends. The stages count their steps from 1 each, and W&B
and Trackio refuse a step lower than one already logged, so there each stage's metrics are plotted
against their own step metric (`sft/step`, `rapo/step`); MLflow takes the step per metric.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from typing import Any

#: `report_to` values, trl's names; TensorBoard is written by `MetricsLogger`, the rest here.
REPORT_TO_CHOICES = ("tensorboard", "wandb", "mlflow", "trackio")
#: The module each service needs, and the pip requirement that brings it.
_REQUIREMENTS = {"wandb": ("wandb", "aesr1[trackers]"), "mlflow": ("mlflow", "aesr1[trackers]"),
                 "trackio": ("trackio", "trackio")}  # fmt: skip
#: The project (W&B, Trackio) or experiment (MLflow) name when its environment variable is unset.
DEFAULT_PROJECT = "aesr1"


def parse_report_to(value: str | Iterable[str] | None) -> list[str]:
    """trl's `report_to`: a name, a comma-separated string or a list; "none" (or an empty list) for
    none, "all" for every installed service. ValueError naming an unknown value."""
    if value is None:
        return []
    names = (
        [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    )
    names = [n for n in names if n]
    if names == ["none"] or not names:
        return []
    if names == ["all"]:
        return ["tensorboard", *[n for n in REPORT_TO_CHOICES[1:] if _installed(n)]]
    if "none" in names or "all" in names:
        raise ValueError(f"report_to: 'none' and 'all' stand alone, got {names}")
    unknown = [n for n in names if n not in REPORT_TO_CHOICES]
    if unknown:
        raise ValueError(
            f"report_to: unknown value {unknown[0]!r}; expected 'none', 'all' or a list of "
            f"{', '.join(REPORT_TO_CHOICES)}"
        )
    return list(dict.fromkeys(names))


def _installed(name: str) -> bool:
    module = _REQUIREMENTS[name][0]
    return importlib.util.find_spec(module) is not None


def check_trackers_installed(names: Iterable[str]) -> None:
    """ValueError naming the package of each requested service that is not installed."""
    for name in names:
        if name in _REQUIREMENTS and not _installed(name):
            raise ValueError(
                f"report_to {name}: the {name!r} package is not installed (pip install '{_REQUIREMENTS[name][1]}')"
            )


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config values as dotted keys (`rapo.epsilon_high`), the form trackers store and
    `--resume` compares."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class Trackers:
    """The trackers of one pipeline run, on the main process only (elsewhere every call is a no-op).

    Args:
        names: parsed `report_to` (TensorBoard entries are ignored here).
        run_name: the run's name in every service.
        output_dir: the run's output directory (W&B keeps its offline files there).
        enabled: False on processes other than the main one.
    """

    def __init__(
        self, names: Iterable[str], *, run_name: str, output_dir: str | os.PathLike, enabled: bool = True
    ):
        self.names = [n for n in names if n != "tensorboard"] if enabled else []
        self.run_name = run_name
        self.output_dir = str(output_dir)
        self._trackers: list[Any] = []
        self._stages_defined: set[str] = set()

    def start(self, config_values: dict[str, Any]) -> None:
        """Open every tracker and store the resolved config once."""
        if not self.names:
            return
        from accelerate.state import PartialState
        from accelerate.tracking import MLflowTracker, TrackioTracker, WandBTracker

        PartialState()  # accelerate's trackers log through its state-aware logger
        check_trackers_installed(self.names)
        # values the services cannot store (lists, None) as text
        flat = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v)
            for k, v in flatten(config_values).items()
        }
        for name in self.names:
            if name == "wandb":
                os.makedirs(self.output_dir, exist_ok=True)
                project = os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT)
                tracker = WandBTracker(project, name=self.run_name, dir=self.output_dir)
            elif name == "mlflow":
                experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_PROJECT)
                tracker = MLflowTracker(experiment_name=experiment, run_name=self.run_name)
            else:
                tracker = TrackioTracker(
                    os.environ.get("TRACKIO_PROJECT", DEFAULT_PROJECT), name=self.run_name
                )
            tracker.start()
            tracker.store_init_configuration(flat)
            self._trackers.append(tracker)

    def log(self, stage: str, step: int, metrics: dict[str, Any]) -> None:
        """`metrics` under `<stage>/<name>`, at `step` of that stage."""
        values = {
            f"{stage}/{k}": v
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if not values:
            return
        for tracker in self._trackers:
            if tracker.name in ("wandb", "trackio"):
                self._define_step_metric(tracker, stage)
                tracker.log({**values, f"{stage}/step": step})
            else:
                tracker.log(values, step=step)

    def _define_step_metric(self, tracker: Any, stage: str) -> None:
        key = f"{tracker.name}:{stage}"
        if key in self._stages_defined:
            return
        self._stages_defined.add(key)
        if tracker.name == "wandb":
            tracker.run.define_metric(f"{stage}/step")
            tracker.run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")

    def log_results(self, rows: dict[str, dict[str, Any]], table_markdown: str) -> None:
        """The held-out table: `held_out/<row>/<metric>` scalars everywhere, plus a W&B table and an
        MLflow text artifact of the Markdown table."""
        columns = ("plcc", "srcc", "parse_failure_rate")
        scalars = {
            f"held_out/{row}/{column}": float(values[column])
            for row, values in rows.items()
            for column in columns
            if isinstance(values.get(column), (int, float))
        }
        for tracker in self._trackers:
            if tracker.name == "wandb":
                tracker.log(scalars)
                data = [[row, *(values.get(c) for c in columns)] for row, values in rows.items()]
                tracker.log_table("held_out", columns=["model", *columns], data=data)
            elif tracker.name == "mlflow":
                import mlflow

                tracker.log(scalars, step=0)
                mlflow.log_text(table_markdown + "\n", "held_out.md")
            else:
                tracker.log(scalars)

    def finish(self) -> None:
        for tracker in self._trackers:
            tracker.finish()
        self._trackers = []
