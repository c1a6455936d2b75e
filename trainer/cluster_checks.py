"""What the driver checks about the cluster it joined, before any worker starts: whether training can land on
nodes other than the driver's (then nothing of the driver's disk is readable there), whether the cluster has the
resources the job asks for, and whether a local storage path is really shared by every node.

Each failure is a one-line :class:`~protpeft.errors.ProtpeftError` saying what to pass instead.
"""

from __future__ import annotations

import uuid
from typing import Any

from protpeft.config import RunConfig
from protpeft.errors import ProtpeftError
from protpeft.trainer.storage import RunStorage, StorageError

__all__ = [
    "ClusterError",
    "check_resources",
    "check_storage_shared",
    "driver_node_pin",
    "other_training_nodes",
]

_PROBE_TIMEOUT_S = 60.0


class ClusterError(ProtpeftError):
    """The cluster cannot run the job as asked."""


def _alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [node for node in ray.nodes() if node.get("Alive")]


def other_training_nodes() -> list[dict[str, Any]]:
    """Alive nodes other than the driver's that can host a training worker (they have CPUs or GPUs)."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    return [
        node
        for node in _alive_nodes()
        if node["NodeID"] != here and (node["Resources"].get("CPU", 0) > 0 or node["Resources"].get("GPU", 0) > 0)
    ]


HEAD_RESOURCE = "node:__internal_head__"
"""The resource Ray gives the head node only."""


def driver_node_pin() -> dict[str, float]:
    """A resource request that keeps a task or a Tune trial on the driver's node, when the driver runs on the head
    (Tune takes resource requests, not node affinities); empty elsewhere."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    node = next((n for n in _alive_nodes() if n["NodeID"] == here), None)
    return {HEAD_RESOURCE: 0.001} if node is not None and HEAD_RESOURCE in node["Resources"] else {}


def check_resources(cfg: RunConfig) -> None:
    """The job's workers fit the cluster: each on one node, all of them in the cluster's total.

    Raises:
        ClusterError: naming what the job asks for and what the cluster has.
    """
    engine = cfg.engine
    asks = {"CPU": engine.cpus_per_worker, "GPU": engine.gpus_per_worker}
    nodes = _alive_nodes()
    for resource, per_worker in asks.items():
        if per_worker <= 0:
            continue
        total = sum(node["Resources"].get(resource, 0) for node in nodes)
        largest = max((node["Resources"].get(resource, 0) for node in nodes), default=0)
        need = engine.workers * per_worker
        if largest < per_worker or total < need:
            raise ClusterError(
                f"the job asks for {engine.workers} workers x {per_worker:g} {resource} = {need:g} {resource}; the "
                f"cluster has {total:g} {resource} (at most {largest:g} on one node): pass --workers / "
                f"--{resource.lower()}s-per-worker that fit, or add nodes"
            )


def check_storage_shared(storage: RunStorage, nodes: list[dict[str, Any]]) -> None:
    """A local storage path must be the same directory on every node that trains (a shared filesystem): a probe
    file written here must be visible there. ``storage`` has passed :meth:`RunStorage.check` (it exists here).

    Raises:
        StorageError: the path is this machine's only; says to pass an object store or a shared path.
    """
    if not storage.is_local or not nodes:
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = f".protpeft-shared-{uuid.uuid4().hex}"
    path = storage.path(probe)
    with open(path, "w") as fh:
        fh.write("probe")
    try:
        sees = ray.remote(num_cpus=0)(_exists)
        refs = [
            sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(path)
            for node in nodes
        ]
        seen = ray.get(refs, timeout=_PROBE_TIMEOUT_S)
    finally:
        storage.filesystem.delete_file(path)
    blind = [node["NodeID"][:8] for node, ok in zip(nodes, seen, strict=True) if not ok]
    if blind:
        raise StorageError(
            f"storage {storage.uri} is a directory of this machine only: nodes {', '.join(blind)} cannot read it; "
            "pass --storage s3://BUCKET/PREFIX (endpoint and keys in AWS_ENDPOINT_URL, "
            "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or a path on a filesystem every node mounts"
        )


def _exists(path: str) -> bool:
    import os

    return os.path.exists(path)
