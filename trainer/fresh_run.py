"""A new (not resumed) run starts clean, in one process or on Ray: nothing of an earlier run of the same name is
left where this run writes, so its summary, its ``metrics.jsonl`` and its checkpoints are its own."""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["STALE_RUN_FILES", "start_afresh"]

STALE_RUN_FILES = ("protpeft.json", "metrics.jsonl", "checkpoints")
"""What a run writes into its run directory besides the artefact files it overwrites anyway."""


def start_afresh(run_dir: Path, *other_dirs: Path) -> None:
    """Remove an earlier run's summary, metric log and checkpoints from ``run_dir`` and delete ``other_dirs`` (e.g.
    the run's Ray storage, from which Ray Train V2 would silently resume)."""
    for stale in STALE_RUN_FILES:
        path = Path(run_dir) / stale
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    for directory in other_dirs:
        shutil.rmtree(directory, ignore_errors=True)
