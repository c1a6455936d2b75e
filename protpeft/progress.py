"""A training run's progress read from its ``metrics.jsonl``: step / total, loss, last validation metric, ETA.

The file is the run's own record (one JSON object per logged step: ``{"step": …, "time": …, "train_loss": …}``,
and ``val_*`` at each evaluation), appended while it trains. Any process that can read the run directory can follow
it without talking to Ray: run-many's live table, ``train`` through Ray (:func:`follow_run`). Records written before
the follower started (``since``) belong to an earlier run of the same name and are skipped; a file that is replaced
(a fresh start clears the run directory) is read again from its beginning.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from protpeft.config import RunConfig

__all__ = ["METRICS_FILE", "RunProgress", "follow_run", "format_duration", "planned_steps", "progress_line"]

METRICS_FILE = "metrics.jsonl"


def format_duration(seconds: float | None) -> str:
    """``75`` → ``1:15``, ``3725`` → ``1:02:05``; ``—`` when unknown."""
    if seconds is None:
        return "—"
    minutes, secs = divmod(max(0, round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class RunProgress:
    """Follows one ``metrics.jsonl``: call :meth:`poll` as often as the view refreshes."""

    path: Path
    total: int | None = None
    """Optimizer steps the run will take (:func:`planned_steps`), for step / total and the ETA."""
    metric: str = "val_aupr"
    """The validation metric shown (the run's checkpoint metric)."""
    since: float = field(default_factory=time.time)
    """Records logged before this wall-clock time are an earlier run's."""
    step: int = 0
    loss: float | None = None
    value: float | None = None
    """The last value of ``metric``."""
    records: int = 0
    _first: tuple[float, int] | None = None  # (time, step) of the first record read: the ETA's rate starts there
    _last_time: float | None = None
    _offset: int = 0
    _inode: int | None = None

    def poll(self) -> bool:
        """Read what was appended since the last call; True when there were new records."""
        try:
            stat = self.path.stat()
        except OSError:
            return False  # not written yet (or cleared for a fresh start)
        if stat.st_ino != self._inode or stat.st_size < self._offset:
            self._inode, self._offset = stat.st_ino, 0  # a new file: from the top
        if stat.st_size == self._offset:
            return False
        with self.path.open("rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read(stat.st_size - self._offset)
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written is read once it is whole
        self._offset += len(complete)
        before = self.records
        for line in complete.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                self.update(record)
        return self.records > before

    def update(self, record: dict[str, Any]) -> None:
        """Take one record (``step``, ``time``, metrics)."""
        logged = record.get("time")
        if isinstance(logged, int | float) and logged < self.since:
            return
        step = record.get("step")
        if isinstance(step, int):
            self.step = max(self.step, step)
        if isinstance(record.get("train_loss"), int | float):
            self.loss = float(record["train_loss"])
        if isinstance(record.get(self.metric), int | float):
            self.value = float(record[self.metric])
        if isinstance(logged, int | float):
            if self._first is None:
                self._first = (float(logged), self.step)
            self._last_time = float(logged)
        self.records += 1

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate since the first record (None until two records with progress between)."""
        if self.total is None or self._first is None or self._last_time is None:
            return None
        if self.step >= self.total:
            return 0.0
        t0, s0 = self._first
        if self.step <= s0 or self._last_time <= t0:
            return None
        rate = (self.step - s0) / (self._last_time - t0)
        return max(0.0, (self.total - self.step) / rate - max(0.0, time.time() - self._last_time))

    def cells(self) -> dict[str, str]:
        """``step``, ``loss``, ``val`` and ``eta`` as display strings (``""`` / ``—`` while unknown)."""
        return {
            "step": f"{self.step}/{self.total}" if self.total else str(self.step),
            "loss": f"{self.loss:.4f}" if self.loss is not None else "",
            "val": f"{self.value:.4f}" if self.value is not None else "",
            "eta": format_duration(self.eta_s) if self.records else "",
        }


def progress_line(name: str, progress: RunProgress) -> str:
    """One line: ``NAME  step 120/260  loss 0.4123  val_aupr 0.8123  ETA 0:42``."""
    cells = progress.cells()
    parts = [name, f"step {cells['step']}"]
    if cells["loss"]:
        parts.append(f"loss {cells['loss']}")
    if cells["val"]:
        parts.append(f"{progress.metric} {cells['val']}")
    if cells["eta"]:
        parts.append(f"ETA {cells['eta']}")
    return "  ".join(parts)


def planned_steps(cfg: RunConfig, workers: int | None = None) -> int | None:
    """The optimizer steps ``cfg`` will take, from its training split's size (read here, as training reads it);
    None when the data cannot be read (the run itself reports why)."""
    from protpeft.data.datasets import load_task_data
    from protpeft.errors import ProtpeftError
    from protpeft.trainer.loop import plan_steps

    try:
        data = load_task_data(cfg.task, cfg.data)
        return plan_steps(cfg, len(data.splits["train"]), workers or cfg.engine.workers).total_steps
    except (ProtpeftError, OSError):
        return None


@contextmanager
def follow_run(
    run_dir: str | Path,
    name: str,
    *,
    total: int | None = None,
    metric: str = "val_aupr",
    console: Console | None = None,
    refresh_s: float = 0.5,
) -> Iterator[RunProgress]:
    """While the block runs (e.g. ``trainer.fit()``), show the run's progress line live (Rich), read from
    ``run_dir/metrics.jsonl``. The last line stays on screen when the run logged anything (a run that failed before
    its first step leaves only its error)."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    console = console or Console()
    progress = RunProgress(Path(run_dir) / METRICS_FILE, total=total, metric=metric)
    stop = threading.Event()
    live = Live(Text(f"{name}  starting"), console=console, refresh_per_second=4, transient=True)

    def refresh() -> None:
        while not stop.wait(refresh_s):
            if progress.poll():
                live.update(Text(progress_line(name, progress)))

    thread = threading.Thread(target=refresh, name="protpeft-progress", daemon=True)
    live.start()
    thread.start()
    try:
        yield progress
    finally:
        stop.set()
        thread.join()
        live.stop()
        progress.poll()
        if progress.records:
            console.print(progress_line(name, progress), highlight=False)
