"""Fixtures of the integration tests: one local Ray instance for the whole session (2 CPUs, like the CI machine),
and small helpers shared by the Ray Train, fault and run-many tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="session")
def ray_local(_isolated_cache) -> Iterator[None]:
    """A local Ray instance with 2 CPUs shared by every test that trains through Ray (started after the session's
    embedding-cache variable is set, so workers inherit it)."""
    import ray

    from protpeft.trainer.ray_cluster import connect

    connect(num_cpus=2)
    yield
    ray.shutdown()
    os.environ.pop("RAY_API_SERVER_ADDRESS", None)  # set by connect() for the instance it started


@pytest.fixture
def one_thread() -> Iterator[None]:
    """In-process reference runs use one intra-op thread, like a 1-CPU Ray worker (same reduction order, and no
    thread oversubscription on a 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
