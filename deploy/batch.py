"""Offline batch prediction as Ray tasks: ``protpeft predict NAME@alias --ray [--address …] --pairs … --out …``.

The driver resolves the model to one exact version (an alias moving mid-run cannot mix versions), reads and
validates the inputs with the same readers as one-machine prediction (:mod:`protpeft.batch_predict`), splits the
examples into chunks and runs one task per chunk; each task loads the model by its registry name (once per worker
process: later chunks on the same worker reuse it) and predicts with :func:`~protpeft.batch_predict.predict_examples`.
A progress bar follows the chunks; the TSV is written by the one-machine writer, in input order.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from protpeft.predict import Predictor

__all__ = ["CHUNK_MAX", "predict_chunk", "predict_files_on_ray"]

CHUNK_MAX = 4096
"""Most examples in one task: bounds a task's memory and keeps the progress bar moving on big inputs."""


@dataclass(frozen=True)
class TaskLabels:
    """What the TSV writer needs of a predictor, without loading the model on the driver."""

    task: str
    label_names: tuple[str, ...]

    def labels(self, probs: np.ndarray, threshold: float = 0.5) -> list:
        from protpeft.predict import Predictor

        return Predictor.labels(self, probs, threshold)  # reads only ``task`` and ``label_names``


@functools.lru_cache(maxsize=2)
def _load(model: str, base: str | None, tracking_uri: str | None) -> Predictor:
    from protpeft.predict import Predictor

    if Path(model).is_dir():
        return Predictor.from_run_dir(model, base=base)
    from protpeft.registry import load

    return load(model, base=base, tracking_uri=tracking_uri)


def predict_chunk(
    model: str, base: str | None, tracking_uri: str | None, examples: list[tuple[str, ...]], batch_size: int
) -> tuple[np.ndarray, str, tuple[str, ...]]:
    """One task: (probabilities, task, label names) for a chunk of examples."""
    from protpeft.batch_predict import predict_examples

    predictor = _load(model, base, tracking_uri)
    return predict_examples(predictor, examples, batch_size), predictor.task, predictor.label_names


def _resolve(model: str, tracking_uri: str) -> tuple[str, str]:
    """(what tasks load: an absolute run directory or ``name/version``, the task)."""
    if Path(model).is_dir():
        from protpeft.artifact import read_artifact

        return str(Path(model).resolve()), read_artifact(model).task
    from protpeft.registry import get_version

    info = get_version(model, tracking_uri)
    if info.task is None:
        from protpeft.registry import RegistryError

        raise RegistryError(f"{info}: the version records no task tag; was it registered by protpeft?")
    return f"{info.name}/{info.version}", info.task


def predict_files_on_ray(
    model: str,
    out: Path,
    pairs: Path | None = None,
    sequences: Path | None = None,
    fasta: Path | None = None,
    batch_size: int = 16,
    base: str | None = None,
    address: str | None = None,
    chunks: int | None = None,
    progress: bool = True,
) -> int:
    """Predict a file's pairs or sequences as Ray tasks and write the TSV; return the number of predictions.

    ``chunks`` defaults to twice the cluster's CPUs (at most :data:`CHUNK_MAX` examples each). A local Ray instance
    is started unless ``address`` (or ``$RAY_ADDRESS``) names a cluster; there, run directories and the MLflow store
    must be reachable from every node (use an ``mlflow server`` as ``MLFLOW_TRACKING_URI``). A Ray connection this
    process already has is used as it is, and left open.
    """
    import numpy as np
    import ray

    from protpeft.batch_predict import progress_bar, read_prediction_inputs, write_predictions
    from protpeft.registry import tracking_uri
    from protpeft.trainer.ray_cluster import connect, resolve_address

    from .serve import FORWARDED_ENV

    uri = tracking_uri()
    target, task = _resolve(model, uri)
    ids, examples, labels = read_prediction_inputs(task, pairs, sequences, fasta)
    local = resolve_address(address) == "local"
    started = local and not ray.is_initialized()  # else: a cluster, or the caller's Ray, left running
    connect(address)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        n = max(1, min(len(examples), chunks or max(2 * cpus, math.ceil(len(examples) / CHUNK_MAX))))
        bounds = np.linspace(0, len(examples), n + 1).astype(int)
        options: dict = {"num_cpus": 1}
        if not local:  # local workers inherit the environment (and stay reusable by later calls)
            env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ} | {"MLFLOW_TRACKING_URI": uri}
            options["runtime_env"] = {"env_vars": env}
        remote = ray.remote(predict_chunk).options(**options)
        pending = {remote.remote(target, base, uri, examples[a:b], batch_size): i
                   for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))}  # fmt: skip
        results = {}
        with progress_bar(len(pending), f"{len(pending)} chunks on Ray", enabled=progress) as advance:
            waiting = list(pending)
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1)
                results[pending[done[0]]] = ray.get(done[0])
                advance(1)
    finally:
        if started:
            ray.shutdown()
    parts = [results[i] for i in sorted(results)]
    probs = np.concatenate([p[0] for p in parts])
    write_predictions(out, TaskLabels(parts[0][1], parts[0][2]), ids, probs, labels)
    return len(ids)
