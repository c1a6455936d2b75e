"""Ray resources of a run's workers: ``engine.cpus_per_worker: auto`` resolved on the driver.

Ray gives a worker as many threads as CPUs it asks for (``OMP_NUM_THREADS``), so a fixed default of 1 left a lone
worker on a many-core node with one thread. ``auto`` takes the cluster's node sizes and how many workers will run at
once (one run's, all of run-many's jobs', or ``max_concurrent`` Tune trials') and gives each worker the most whole
CPUs that still lets all of them be placed at the same time.
"""

from __future__ import annotations

from collections.abc import Sequence

from protpeft.config import EngineConfig, RunConfig

__all__ = ["auto_cpus", "node_cpus", "with_worker_cpus", "worker_cpus"]


def auto_cpus(workers: int, nodes: Sequence[float]) -> int:
    """The most whole CPUs per worker with which ``workers`` workers fit on ``nodes`` (CPUs of each node) at once;
    1 when even that does not fit (Ray then queues what does not fit, as for any explicit request)."""
    best = 1
    for cpus in range(2, int(max(nodes, default=0)) + 1):
        if sum(int(n // cpus) for n in nodes) < workers:
            break
        best = cpus
    return best


def worker_cpus(engine: EngineConfig, nodes: Sequence[float], workers_at_once: int | None = None) -> float:
    """``engine.cpus_per_worker`` as a number: the configured one, or for ``auto`` :func:`auto_cpus` of
    ``workers_at_once`` workers (default: this run's ``engine.workers``)."""
    if engine.cpus_per_worker != "auto":
        return float(engine.cpus_per_worker)
    return float(auto_cpus(workers_at_once or engine.workers, nodes))


def with_worker_cpus(cfg: RunConfig, nodes: Sequence[float], workers_at_once: int | None = None) -> RunConfig:
    """``cfg`` with ``engine.cpus_per_worker`` a number (see :func:`worker_cpus`); ``cfg`` itself when it is one."""
    if cfg.engine.cpus_per_worker != "auto":
        return cfg
    engine = cfg.engine.model_copy(update={"cpus_per_worker": worker_cpus(cfg.engine, nodes, workers_at_once)})
    return cfg.model_copy(update={"engine": engine})


def node_cpus() -> list[float]:
    """CPUs of each live node of the connected Ray cluster (a head started with ``--num-cpus 0`` counts 0)."""
    import ray

    return [float(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node.get("Alive")]
