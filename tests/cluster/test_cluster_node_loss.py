"""A worker node killed by its process group leaves the cluster; a replacement with the same resources joins."""

from __future__ import annotations

import time

import pytest
from processes import wait_until
from ray_nodes import alive_nodes

pytestmark = pytest.mark.cluster


def _alive_ids(cluster, name: str) -> set[str]:
    return {n["node_id"] for n in alive_nodes(cluster.dashboard_url, cluster.token) if name in n["resources"]}


def test_killed_node_leaves_and_replacement_joins(local_cluster) -> None:
    (lost,) = _alive_ids(local_cluster, "nodeB")
    (survivor,) = _alive_ids(local_cluster, "nodeA")

    started = time.monotonic()
    local_cluster.kill_node("nodeB")
    wait_until("nodeB to be declared dead", lambda: not _alive_ids(local_cluster, "nodeB"), timeout=60)
    local_cluster.timings["lost node declared dead (s)"] = round(time.monotonic() - started, 1)
    assert not local_cluster.nodes["nodeB"].group.ours()  # nothing of the lost node is left running
    assert _alive_ids(local_cluster, "nodeA") == {survivor}

    local_cluster.start_node("nodeB")
    (replacement,) = _alive_ids(local_cluster, "nodeB")
    assert replacement != lost
