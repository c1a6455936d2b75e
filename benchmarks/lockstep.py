"""The lock-step handshake of ``bench_vs_loop``'s sides (one step of one side at a time, through marker files in a
shared directory) and the RSS readings each side reports."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

from benchmarks.memory_probe import status_kib


class Gate:
    """File handshake with the parent: ``ready`` when the side can start, ``done-K`` after step K, and before step K
    (K >= 1) wait for ``go-K``. Time spent waiting is counted in ``blocked`` (kept out of every figure)."""

    def __init__(self, directory: str, side: str, steps: int) -> None:
        self.directory, self.side, self.steps = Path(directory), side, steps
        self.blocked = 0.0

    def _mark(self, name: str) -> None:
        (self.directory / f"{self.side}-{name}").write_text(json.dumps({"blocked": self.blocked}))

    def wait(self, step: int) -> None:
        """Before ``step``: tell the parent (``ready`` for step 1), then wait for its go."""
        if step == 1:
            self._mark("ready")
        go = self.directory / f"{self.side}-go-{step}"
        started = time.perf_counter()
        while not go.exists():
            time.sleep(0.005)
        self.blocked += time.perf_counter() - started

    def done(self, step: int) -> None:
        self._mark(f"done-{step}")
        if step < self.steps:
            self.wait(step + 1)


class GateLogger:
    """protpeft's side of the gate, as a metric logger: ``log_config`` (the start of ``run_training``) waits for
    step 1, each training window (one per step) marks its step done and waits for the next."""

    def __init__(self, directory: str, side: str, steps: int) -> None:
        self.gate = Gate(directory, side, steps)

    def log_config(self, config: dict) -> None:
        self.gate.wait(1)

    def log_metrics(self, metrics: dict, step: int) -> None:
        if "examples_per_s" in metrics:
            self.gate.done(step)

    def log_run_dir(self, run_dir, artifact) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


def rss_mb() -> float:
    return status_kib("VmRSS") / 1024 or float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
