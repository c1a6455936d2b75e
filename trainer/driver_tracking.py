"""The driver's side of a Ray Train run's logs: metric records reported by the workers are written to the run
directory's ``metrics.jsonl`` and to the tracking store by a Ray Train callback, which runs in the run's
controller — an actor Ray Train pins to the driver's node — so it writes the driver's files and the driver's
(possibly embedded SQLite) MLflow store. Workers never open either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray.train

from protpeft.tracking import JsonlLogger, MetricLogger, MultiLogger
from protpeft.trainer.ray_worker import LOG_KEY

__all__ = ["TrackingCallback", "write_records"]


def write_records(logger: MetricLogger, records: list[dict[str, Any]]) -> None:
    """Each ``{"step": N, <metrics>}`` record as one ``log_metrics`` call."""
    for record in records:
        metrics = {k: v for k, v in record.items() if k != "step"}
        logger.log_metrics(metrics, int(record["step"]))


class TrackingCallback(ray.train.UserCallback):
    """Writes the leader's reported records to ``log_path`` (JSON lines) and, when given, to the MLflow run
    ``tracking`` (a picklable logger factory). Built on the driver, pickled to the controller."""

    def __init__(self, log_path: str | Path, tracking: Any = None) -> None:
        self.log_path = str(log_path)
        self.tracking = tracking
        self._logger: MetricLogger | None = None

    def _open(self) -> MetricLogger:
        if self._logger is None:
            loggers = [JsonlLogger(Path(self.log_path))]
            if self.tracking is not None:
                loggers.append(self.tracking())
            self._logger = MultiLogger(*loggers)
        return self._logger

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        records = (metrics[0] if metrics else {}).get(LOG_KEY) or []
        if records:
            write_records(self._open(), records)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_logger": None}  # the open logger (MLflow client) stays where it was made
