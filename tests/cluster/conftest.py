"""Fixtures of the shared-nothing cluster tests (marker ``cluster``): one S3 server and one local cluster per session,
stopped as soon as the last test that uses them has run, so they never sit idle under the rest of the suite."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable, Iterator

import pytest
from local_cluster import LocalCluster, default_root, start_cluster
from ray_nodes import namespace_probe
from seaweed import S3Store, start_s3_store

_RUNNING: list[Callable[[], object]] = []
"""How to stop what the fixtures started, in start order."""
_TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="session")
def s3_store() -> Iterator[S3Store]:
    """A SeaweedFS S3 server on fresh ports with an empty bucket: ``.settings`` (endpoint, keys, ``.env()``,
    ``.filesystem()``) and ``.bucket``."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    _RUNNING.append(lambda: signal.signal(signal.SIGTERM, previous))
    root = default_root()
    started = time.monotonic()
    store = start_s3_store(root / "s3", "protpeft-test", root / "seaweedfs.log")
    _TIMINGS["s3 store up (s)"] = round(time.monotonic() - started, 1)
    _RUNNING.append(lambda: (store.stop(), shutil.rmtree(root, ignore_errors=True)))
    yield store
    _stop_all()


def _interrupt(signum, frame) -> None:
    """SIGTERM (``timeout``, a CI runner) as Ctrl-C: pytest then still runs the teardown that stops the servers,
    which run in sessions of their own and would otherwise outlive it."""
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def local_cluster(s3_store: S3Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A running cluster on ``s3_store``: a head with no CPUs, worker nodes ``nodeA`` and ``nodeB`` (1 CPU each, a
    custom resource of their name) that see neither the worktree's files nor /tmp nor pytest's tmp dirs.

    Use ``.gcs_address``, ``.dashboard_url``, ``.env()`` (token + AWS variables for a driver process), ``.s3``
    (endpoint, keys, ``.filesystem()``), ``.bucket``, ``.driver_dir``, ``.kill_node(name)``, ``.start_node(name)``.
    """
    refused = namespace_probe()
    if refused:
        pytest.skip(refused)
    cluster = start_cluster(extra_hide=[tmp_path_factory.getbasetemp()], store=s3_store)
    _RUNNING.append(lambda: (_TIMINGS.update(cluster.timings), cluster.stop()))
    yield cluster
    _stop_all()


def _stop_all() -> None:
    """Run the pending stops, newest first (the cluster before the S3 server it uses)."""
    while _RUNNING:
        _RUNNING.pop()()


_FINISHED: set[str] = set()
"""Tests of this session that use the cluster or the S3 store and have run."""


def _uses_cluster(item: pytest.Item) -> bool:
    return bool({"local_cluster", "s3_store"} & set(getattr(item, "fixturenames", ())))


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop the cluster right after the last test of the session that uses it has run. Counted, not looked up by
    position: under pytest-xdist (``make test``) the cluster tests run on one worker in an order of the scheduler's
    choosing, and that worker's collection still lists every test of the suite."""
    if not _uses_cluster(item):
        return
    _FINISHED.add(item.nodeid)
    if _RUNNING and all(other.nodeid in _FINISHED for other in item.session.items if _uses_cluster(other)):
        _stop_all()


def pytest_terminal_summary(terminalreporter) -> None:
    if _TIMINGS:
        terminalreporter.write_line(f"local cluster timings: {_TIMINGS}")
