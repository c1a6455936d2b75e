"""Processes of the local test cluster: free port blocks, one process group per server, stopped by its group.

Every server (SeaweedFS, each Ray node) runs in a session and process group of its own (``setsid`` through
``Popen(start_new_session=True)``, so the recorded PID *is* the group id — the ``setsid`` binary would fork when its
caller leads a group, and ``$!`` would then name the wrong process). Stopping sends SIGTERM to the group, then SIGKILL
after a grace period. Nothing here looks processes up by name, and ``ray stop`` is never used: it stops every Ray
process on the machine, other tests' clusters included.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from protpeft.process_groups import group_alive, wait_groups_gone
from protpeft.trainer.ray_cluster import port_is_free

PORT_RANGE = (20000, 28000)
"""Blocks are picked below Linux's ephemeral range (32768–60999), so outgoing connections never take them meanwhile,
and below the ports protpeft's ``free_port`` hands out (28000–32767), so a node's worker port is never a port another
test picked for its server."""
THROWAWAY_GRACE = 3.0
"""Seconds a throwaway server (a test cluster's node, its S3 server) gets between SIGTERM and SIGKILL: measured
here, a worker node's raylet and runtime-env agent and SeaweedFS's ``weed server`` were all still up 10 s after
SIGTERM (a graceful shutdown protects state these servers are about to lose anyway), so a 10 s grace only made each
teardown ~20 s longer."""
_BLOCK_CHOICE = random.SystemRandom()
"""Not the ``random`` module: the tests' in-process training seeds it, and two workers seeded alike would try the
same blocks in the same order (see ``protpeft.trainer.ray_cluster.free_port``)."""


class PortBlock:
    """``n`` consecutive free ports on 127.0.0.1, handed out one by one (``take``) or as a range (``take_range``)."""

    def __init__(self, n: int, tries: int = 200) -> None:
        low, high = PORT_RANGE
        for _ in range(tries):
            base = _BLOCK_CHOICE.randrange(low, high - n)
            if all(port_is_free(p) for p in range(base, base + n)):
                self._next, self._end = base, base + n
                return
        raise RuntimeError(f"no block of {n} free ports in {PORT_RANGE} after {tries} tries")

    def take(self) -> int:
        return self.take_range(1)[0]

    def take_range(self, n: int) -> range:
        if self._next + n > self._end:
            raise RuntimeError("port block exhausted")
        taken = range(self._next, self._next + n)
        self._next += n
        return taken


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), to tell a process from a later one with its PID."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[19])


@dataclass
class ProcessGroup:
    """One server started in a new session: its PID is its PGID. ``started`` identifies the process (see
    :func:`start_time`) so that a stop from a state file never signals a group that reused the number."""

    name: str
    pgid: int
    started: int | None
    log: Path
    popen: subprocess.Popen | None = None

    @classmethod
    def start(cls, name: str, argv: Sequence[str], log: Path, env: dict[str, str], cwd: Path) -> ProcessGroup:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                start_new_session=True,
            )  # fmt: skip
        return cls(name, popen.pid, start_time(popen.pid), log, popen)

    def running(self) -> bool:
        """The group's leader is alive (a group whose leader died may still hold orphans: see :meth:`stop`)."""
        if self.popen is not None:
            return self.popen.poll() is None
        return start_time(self.pgid) == self.started and self.started is not None

    def ours(self) -> bool:
        """The group still holds our processes: the leader is the one we started, or (leader gone) the group has
        members and we started it in this process (a Popen); from a state file only a matching leader counts."""
        if self.popen is not None:
            return group_alive(self.pgid)
        return self.running()

    def signal(self, sig: int) -> None:
        if self.ours():
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                pass

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the group, SIGKILL to what is left after ``grace`` seconds; reaps the leader."""
        stop_groups([self], grace)

    def kill(self) -> None:
        """SIGKILL to the whole group at once (a node lost, not shut down)."""
        self.signal(signal.SIGKILL)
        wait_groups_gone([self.pgid], 5.0, self._reap)

    def _reap(self) -> None:
        if self.popen is not None:
            self.popen.poll()

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def to_json(self) -> dict:
        return {"name": self.name, "pgid": self.pgid, "started": self.started, "log": str(self.log)}

    @classmethod
    def from_json(cls, data: dict) -> ProcessGroup:
        return cls(data["name"], data["pgid"], data["started"], Path(data["log"]))


def wait_until(
    what: str, ready: Callable[[], bool], timeout: float, alive: ProcessGroup | None = None, every: float = 0.25
) -> float:
    """Poll ``ready`` until true; fail with ``what`` (and the log tail of ``alive`` if it exits). Returns seconds."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if alive is not None and not alive.running():
            raise RuntimeError(f"{alive.name} exited while waiting for {what}; log {alive.log}:\n{alive.log_tail()}")
        if ready():
            return time.monotonic() - start
        time.sleep(every)
    tail = f"; log {alive.log}:\n{alive.log_tail()}" if alive is not None else ""
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s{tail}")


def http_status(url: str, headers: dict[str, str] | None = None, timeout: float = 2.0) -> int | None:
    """The HTTP status of a GET (errors included), or None when nothing answers."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def stop_groups(groups: Sequence[ProcessGroup], grace: float = 10.0) -> None:
    """SIGTERM to every group at once, SIGKILL to what is left of them after ``grace`` seconds, leaders reaped: a
    cluster's nodes shut down side by side, not one grace period after another."""
    pgids = [group.pgid for group in groups]

    def reap() -> None:
        for group in groups:
            group._reap()

    for group in groups:
        group.signal(signal.SIGTERM)
    if not wait_groups_gone(pgids, grace, reap):
        for pgid in pgids:
            if group_alive(pgid):
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        wait_groups_gone(pgids, 5.0, reap)
    reap()
