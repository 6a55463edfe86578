"""Step logging: one JSONL line per logged step, TensorBoard scalars, and a console summary.

Only the main process writes. On resume the JSONL file is cut back to the checkpoint's step (to
nothing when no checkpoint was reached) and TensorBoard hides the killed run's later events, so a
killed run leaves no duplicate steps behind.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aesr1.train.trackers import Trackers


def _clean(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null reads back as "not available"
    return value


class MetricsLogger:
    """Appends `{"stage", "step", "time", **metrics}` to `<dir>/metrics.jsonl` and TensorBoard.

    Args:
        log_dir: directory of the JSONL file and the TensorBoard event files.
        stage: prefix of every record and TensorBoard tag (e.g. "rapo").
        enabled: False on non-main processes.
        tensorboard: also write TensorBoard scalars.
        trackers: the run's experiment trackers (`aesr1.train.trackers.Trackers`), given every
            record under the same `<stage>/<metric>` names as TensorBoard.
    """

    def __init__(
        self,
        log_dir: str | Path,
        stage: str,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        trackers: Trackers | None = None,
    ):
        self.stage = stage
        self.trackers = trackers if enabled else None
        self.enabled = enabled
        self.path = Path(log_dir) / f"{stage}_metrics.jsonl"
        self._writer = None
        self._tensorboard = enabled and tensorboard
        self._tensorboard_dir = Path(log_dir) / "tensorboard" / stage
        self._purge_step: int | None = None
        self._start = time.time()
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int, *, also: Callable[[dict[str, Any]], bool] | None = None) -> None:
        """Drop records of steps after `step`: written by a run that was killed after its last
        checkpoint (or before any, with `step` 0), they are logged again by the resumed run.
        `also` names further records to drop (ones logged after the checkpoint of their step)."""
        if not self.enabled:
            return
        # The writer opens lazily so that it can hide the killed run's events from this step on.
        self._purge_step = step + 1
        if not self.path.exists():
            return
        from aesr1.train.durable import atomic_write_text

        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            if record.get("step", 0) <= step and not (also is not None and also(record)):
                kept.append(line)
        atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))

    def _tensorboard_writer(self):
        if self._writer is None and self._tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self._tensorboard_dir), purge_step=self._purge_step)
        return self._writer

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"stage": self.stage, "step": step, "time": round(time.time() - self._start, 3)}
        record.update({key: _clean(value) for key, value in metrics.items()})
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        writer = self._tensorboard_writer()
        if writer is not None:
            for key, value in record.items():
                if key in ("stage", "step", "time") or not isinstance(value, (int, float)):
                    continue
                writer.add_scalar(f"{self.stage}/{key}", value, step)
        if self.trackers is not None:
            self.trackers.log(
                self.stage, step, {k: v for k, v in record.items() if k not in ("stage", "step", "time")}
            )

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics JSONL file."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
