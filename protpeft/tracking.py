"""The small logging interface the training loop talks to. MLflow implements it in ``protpeft.registry``; the core
ships a JSON-lines logger (``metrics.jsonl`` in the run directory) and a fan-out for using several at once."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from protpeft.artifact import RunArtifact

__all__ = ["JsonlLogger", "MetricLogger", "MultiLogger", "NullLogger"]


@runtime_checkable
class MetricLogger(Protocol):
    def log_config(self, config: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_run_dir(self, run_dir: Path, artifact: RunArtifact) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


class NullLogger:
    def log_config(self, config: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_run_dir(self, run_dir: Path, artifact: RunArtifact) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


class JsonlLogger(NullLogger):
    """Appends one JSON object per ``log_metrics`` call: ``{"step": …, "time": …, <metrics>}``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        record = {"step": step, "time": round(time.time(), 3)}
        record.update({k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))})
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


class MultiLogger(NullLogger):
    def __init__(self, *loggers: MetricLogger) -> None:
        self.loggers = [lg for lg in loggers if lg is not None]

    def log_config(self, config: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.log_config(config)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for lg in self.loggers:
            lg.log_metrics(metrics, step)

    def log_run_dir(self, run_dir: Path, artifact: RunArtifact) -> None:
        for lg in self.loggers:
            lg.log_run_dir(run_dir, artifact)

    def close(self, status: str = "FINISHED") -> None:
        for lg in self.loggers:
            lg.close(status)
