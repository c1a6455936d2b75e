"""MLflow implementation of the trainer's :class:`~protpeft.tracking.MetricLogger`.

The MLflow run is created on the driver by :func:`logger_factory`; the factory it returns is a small picklable
object (run id + tracking URI) that the driver's side (the driver, and Ray Train's controller on the driver's node)
calls to get an :class:`MLflowLogger` writing into that run; workers never open the tracking store.
What a run records: params = the whole resolved config flattened (plus ``config.json``), every metric the loop logs
with its step, tags (task, mode, base model and its fingerprint, dataset fingerprint, git commit, protpeft version),
parameter counts, peak memory and wall time as metrics, and the run directory as a pyfunc model (``model/``, see
:mod:`protpeft.registry.packaging`) that :func:`protpeft.registry.register_run` turns into a version.
"""

from __future__ import annotations

import math
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import protpeft
from protpeft.config import RunConfig, flatten_config

from . import store
from .packaging import MODEL_PATH, PackagedRun
from .versions import FILES_TAG, MODEL_PATH_TAG, SIZE_TAG

if TYPE_CHECKING:
    from protpeft.artifact import RunArtifact

__all__ = ["MLflowLogger", "MLflowLoggerFactory", "git_commit", "logger_factory", "record_finished_run", "run_tags"]

_PARAM_VALUE_LIMIT = 6000  # MLflow's limit on a param value
_BATCH = 100  # params/metrics per log_batch call (MLflow accepts at most 100 params per batch)
_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")


def git_commit(directory: str | Path | None = None) -> str:
    """``git rev-parse HEAD`` of the project directory (else of protpeft's own source tree), or ``"unknown"``."""
    for where in (directory or store.project_dir(), Path(protpeft.__file__).resolve().parent):
        try:
            out = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                                 timeout=10, check=False)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return "unknown"


def run_tags(artifact: RunArtifact) -> dict[str, str]:
    """The lineage tags of a run directory (what a registered version copies)."""
    keys = ("task", "mode", "base_model", "base_fingerprint", "dataset_fingerprint", "protpeft_version")
    tags = {k: str(v) for k in keys if (v := getattr(artifact, k)) is not None}
    if artifact.run_name:
        tags["run_name"] = str(artifact.run_name)
    return tags


def _metric_key(key: str) -> str:
    return _BAD_KEY.sub("_", key)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class MLflowLogger:
    """Writes one MLflow run; every call goes straight to the store (no background threads to flush)."""

    def __init__(self, run_id: str, tracking_uri: str) -> None:
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = store.client(self.tracking_uri)
        return self._client

    def log_config(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten_config(config)
        params = [Param(k, str(v)[:_PARAM_VALUE_LIMIT]) for k, v in sorted(flat.items())]
        for start in range(0, len(params), _BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + _BATCH])
        self.client.log_dict(self.run_id, config, "config.json")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(_metric_key(k), v, now, int(step)) for k, raw in metrics.items() if (v := _finite(raw)) is not None
        ]
        for start in range(0, len(batch), _BATCH):
            self.client.log_batch(self.run_id, metrics=batch[start : start + _BATCH])

    def log_run_dir(self, run_dir: Path, artifact: RunArtifact) -> None:
        """Record the finished run (lineage tags, costs, the artefact as a pyfunc model); mark it FINISHED."""
        from .run_lifecycle import log_finished_run

        log_finished_run(self.client, self.run_id, run_dir, artifact)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


def record_finished_run(mlflow_client, run_id: str, artifact: RunArtifact, packaged: PackagedRun) -> str:
    """Upload a finished run directory's pyfunc model into run ``run_id``, then its tags and cost metrics; return
    the model's path among the run's artefacts.

    The model goes to ``model/``, or to ``model-2/``, ``model-3/``, ... when an earlier upload (one cut short by an
    interruption, whose files would otherwise mix with these) is there; the tags, written last, name the complete
    one (:data:`~protpeft.registry.versions.MODEL_PATH_TAG`).
    """
    from mlflow.entities import Metric, RunTag

    model_path = _free_model_path(mlflow_client, run_id)
    mlflow_client.log_artifacts(run_id, str(packaged.path), model_path)
    tags = {**run_tags(artifact), SIZE_TAG: str(packaged.size_bytes), FILES_TAG: str(packaged.files),
            MODEL_PATH_TAG: model_path}  # fmt: skip
    if "git_commit" not in mlflow_client.get_run(run_id).data.tags:  # the driver's, set when the run was created
        tags["git_commit"] = git_commit()
    costs: dict[str, Any] = {f"params_{k}": v for k, v in artifact.params.items()}
    costs.update({"peak_memory_mb": artifact.peak_memory_mb, "wall_seconds": artifact.seconds})
    now, step = int(time.time() * 1000), artifact.steps
    metrics = [Metric(k, v, now, step) for k, raw in costs.items() if (v := _finite(raw)) is not None]
    mlflow_client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
    return model_path


def _free_model_path(mlflow_client, run_id: str) -> str:
    """``model``, or the first ``model-N`` (N ≥ 2) that holds no artefacts of run ``run_id`` yet."""
    taken = {Path(f.path).name for f in mlflow_client.list_artifacts(run_id)}
    candidates = (MODEL_PATH if n == 1 else f"{MODEL_PATH}-{n}" for n in range(1, len(taken) + 2))
    return next(path for path in candidates if path not in taken)


@dataclass(frozen=True)
class MLflowLoggerFactory:
    """Picklable: built on the driver, called on the driver's node (the driver, Ray Train's controller)."""

    run_id: str
    tracking_uri: str

    def __call__(self) -> MLflowLogger:
        return MLflowLogger(self.run_id, self.tracking_uri)

    def close(self, status: str = "FINISHED") -> None:
        """End the run from the driver, e.g. with ``"FAILED"`` when training raised (a no-op on ended runs)."""
        mlflow_client = store.client(self.tracking_uri)
        if mlflow_client.get_run(self.run_id).info.status == "RUNNING":
            mlflow_client.set_terminated(self.run_id, status)


def logger_factory(
    cfg: RunConfig, tracking_uri: str | None = None, *, parent_run_id: str | None = None, run_name: str | None = None
) -> MLflowLoggerFactory:
    """Create the MLflow run for ``cfg`` and return its factory (see
    :func:`protpeft.registry.run_lifecycle.create_run`, where runs are created)."""
    from .run_lifecycle import create_run

    return create_run(cfg, tracking_uri, parent_run_id=parent_run_id, run_name=run_name)
