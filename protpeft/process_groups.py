"""Whether a process group still runs, and waiting until it does not: what every "stop the servers I started, by
their group" loop asks."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["group_alive", "wait_groups_gone"]


def group_alive(pgid: int) -> bool:
    """Some member of process group ``pgid`` runs. A zombie (an exited leader its parent has not reaped yet) still
    "exists" for ``killpg(pgid, 0)`` but runs nothing, so a group of zombies only counts as gone."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(_runs_in_group(int(pid), pgid) for pid in os.listdir("/proc") if pid.isdigit())


def _runs_in_group(pid: int, pgid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z" and int(fields[2]) == pgid  # state, ppid, pgrp


def wait_groups_gone(
    pgids: Sequence[int], seconds: float, reap: Callable[[], object] = lambda: None, every: float = 0.05
) -> bool:
    """Wait up to ``seconds`` until none of the groups runs, calling ``reap`` between looks (a parent polls its own
    children there, so an exited leader does not stay a zombie); whether they are all gone."""
    deadline = time.monotonic() + seconds
    while any(group_alive(pgid) for pgid in pgids):
        if time.monotonic() >= deadline:
            return False
        reap()
        time.sleep(every)
    return True
