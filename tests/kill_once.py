"""A worker function that kills its own Ray Train worker once, at a chosen step, for the fault tests.

:class:`KillOnce` wraps :func:`~protpeft.trainer.ray_worker.train_worker`: the rank-0 worker records each training
step it logs as ``pid step`` and SIGKILLs its own process the first time it logs step ``at`` (once per marker file).
Ray workers cannot import test modules, so this module travels to them by value (:func:`ship_by_value`).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


class KillOnce:
    """Train as usual; SIGKILL this worker process the first time step ``at`` is logged (once per marker file)."""

    def __init__(self, at: int, marker: Path, trail: Path) -> None:
        self.at, self.marker, self.trail = at, Path(marker), Path(trail)

    def __call__(self, config: dict) -> None:
        from protpeft.trainer import ray_worker

        ray_worker.train_worker(config, watcher=self)

    def log_config(self, config: dict) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if "train_loss" in metrics:
            self.saw(step)

    def saw(self, step: int) -> None:
        with self.trail.open("a") as fh:
            fh.write(f"{os.getpid()} {step}\n")
        if step == self.at and not self.marker.exists():
            self.marker.write_text(str(step))
            os.kill(os.getpid(), signal.SIGKILL)

    def segments(self) -> list[list[int]]:
        """The steps each worker process trained, in order of process start."""
        by_pid: dict[str, list[int]] = {}
        for line in self.trail.read_text().splitlines():
            pid, step = line.split()
            by_pid.setdefault(pid, []).append(int(step))
        return list(by_pid.values())


def ship_by_value() -> None:
    """Make Ray's cloudpickle send :class:`KillOnce` by value (the workers cannot import this module)."""
    from ray import cloudpickle  # Ray's own copy decides how functions and classes travel

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
