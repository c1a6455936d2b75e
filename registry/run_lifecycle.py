"""The life of a tracked training run in MLflow, in one place: created on the driver, written on the driver's side
(the config and the finished run by the driver, metrics by the Ray Train callback on its node) through a picklable
logger factory — workers never open the tracking store —, ended FINISHED (when its run directory is logged) or
FAILED, registered from the model it logged.

::

    with tracked_run(cfg) as run:                                   # the MLflow run (none when tracking is off)
        summary = launch_training(cfg, logger_factory=run.logger_factory)   # params, metrics, run dir
    run.register(summary["run_dir"], "ppi-lora", alias="champion")  # the logged model: packaged once

``protpeft train`` (in one process or on Ray), run-many (one run per job, created by the launching process, ended
by the job's driver task) and Tune (a parent run per experiment, a child run per trial, reopened when a trial
resumes) all go through this module; the training loop only sees :class:`~protpeft.tracking.MetricLogger`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import protpeft
from protpeft.config import RunConfig

from . import store
from .packaging import PackagedRun, package_run

if TYPE_CHECKING:
    from protpeft.artifact import RunArtifact

from .tracking import MLflowLogger, MLflowLoggerFactory, git_commit, record_finished_run
from .versions import FILES_TAG, MODEL_PATH_TAG, SIZE_TAG

__all__ = [
    "TrackedRun",
    "create_run",
    "log_finished_run",
    "logged_package",
    "open_run",
    "reopen_run",
    "tracked_run",
]


def open_run(
    experiment: str,
    run_name: str,
    tags: dict[str, str],
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
) -> tuple[str, str]:
    """Create an MLflow run in ``experiment`` (store and experiment created when missing) → (run id, store URI).

    ``parent_run_id`` nests the run under that run (MLflow's ``mlflow.parentRunId`` tag)."""
    uri = store.ensure_store(tracking_uri)
    mlflow_client = store.client(uri)
    experiment_id = store.ensure_experiment(mlflow_client, experiment)
    if parent_run_id is not None:
        tags = {**tags, "mlflow.parentRunId": parent_run_id}
    run = mlflow_client.create_run(experiment_id, run_name=run_name, tags=tags)
    return run.info.run_id, uri


def create_run(
    cfg: RunConfig, tracking_uri: str | None = None, *, parent_run_id: str | None = None, run_name: str | None = None
) -> MLflowLoggerFactory:
    """The MLflow run of training ``cfg`` (tagged with task, mode, base model, git commit, version) as the factory
    the driver's side calls; ``run_name`` replaces ``cfg.name`` as the name shown in MLflow."""
    tags = {"task": cfg.task, "mode": cfg.mode, "base_model": cfg.model.base, "git_commit": git_commit(),
            "protpeft_version": protpeft.__version__, "run_name": cfg.name}  # fmt: skip
    run_id, uri = open_run(cfg.tracking.experiment, run_name or cfg.name, tags, tracking_uri, parent_run_id)
    return MLflowLoggerFactory(run_id, uri)


def reopen_run(run_id: str, tracking_uri: str) -> MLflowLoggerFactory:
    """An existing run set RUNNING again (a resumed Tune trial continues its own run)."""
    store.client(tracking_uri).update_run(run_id, status="RUNNING")
    return MLflowLoggerFactory(run_id, tracking_uri)


def log_finished_run(mlflow_client, run_id: str, run_dir: Path, artifact: RunArtifact) -> None:
    """Package the run directory (once), upload it as the run's pyfunc model with lineage tags and costs, and mark
    the run FINISHED."""
    with tempfile.TemporaryDirectory(prefix="protpeft-package-") as tmp:
        record_finished_run(mlflow_client, run_id, artifact, package_run(run_dir, Path(tmp)))
    mlflow_client.set_terminated(run_id, "FINISHED")


def logged_package(mlflow_client, run_id: str, run_dir: str | Path) -> PackagedRun | None:
    """What registering ``run_dir`` needs when run ``run_id`` already logged it as its model: its metadata, size and
    file count (recorded when it was packaged), without copying and hashing it again; None when the run has no
    complete logged model (its upload was cut short, or it predates the tags), so the caller packages it.

    ``path`` is the run directory itself: the model to register is already among the run's artefacts.
    """
    from mlflow.exceptions import MlflowException

    from protpeft.artifact import read_artifact

    try:
        tags = mlflow_client.get_run(run_id).data.tags
    except MlflowException:  # an unknown run: the caller says so
        return None
    if any(tag not in tags for tag in (SIZE_TAG, FILES_TAG, MODEL_PATH_TAG)):
        return None
    return PackagedRun(Path(run_dir), read_artifact(run_dir), int(tags[SIZE_TAG]), int(tags[FILES_TAG]))


@dataclass(frozen=True)
class TrackedRun:
    """One training run's MLflow run, or none (tracking off). Picklable: run-many's driver tasks receive it."""

    factory: MLflowLoggerFactory | None = None

    @property
    def run_id(self) -> str | None:
        return self.factory.run_id if self.factory is not None else None

    @property
    def tracking_uri(self) -> str | None:
        return self.factory.tracking_uri if self.factory is not None else None

    @property
    def logger_factory(self) -> MLflowLoggerFactory | None:
        """What the driver's side calls to get the run's logger (None: no tracking)."""
        return self.factory

    def logger(self) -> MLflowLogger | None:
        """The logger for a run trained in this process (``train --local``)."""
        return self.factory() if self.factory is not None else None

    def close(self, status: str = "FINISHED") -> None:
        """End the run (a no-op on an ended run, or without tracking)."""
        if self.factory is not None:
            self.factory.close(status)

    def register(self, run_dir: str | Path, name: str, alias: str | None = None):
        """Register ``run_dir`` as a new version of ``name``, from this run's logged model when it has one.

        Returns: the :class:`~protpeft.registry.ModelVersionInfo`."""
        from .models import register_run

        return register_run(run_dir, name, alias, mlflow_run_id=self.run_id, tracking_uri=self.tracking_uri)


def start(
    cfg: RunConfig, *, parent_run_id: str | None = None, run_name: str | None = None, tracking_uri: str | None = None
) -> TrackedRun:
    """A new tracked run for ``cfg`` (no MLflow run when ``tracking.mlflow`` is off)."""
    if not cfg.tracking.mlflow:
        return TrackedRun()
    return TrackedRun(create_run(cfg, tracking_uri, parent_run_id=parent_run_id, run_name=run_name))


@contextmanager
def tracked_run(
    cfg: RunConfig,
    *,
    run: TrackedRun | None = None,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    tracking_uri: str | None = None,
) -> Iterator[TrackedRun]:
    """The tracked run of training ``cfg`` around the training: ``run`` when one was started already (run-many's
    jobs, a resumed Tune trial), else a new one. Training that raises (or is interrupted) leaves it FAILED, never
    RUNNING; a finished training ends it FINISHED when the driver logs the run directory."""
    tracked = run if run is not None else start(cfg, parent_run_id=parent_run_id, run_name=run_name,
                                                tracking_uri=tracking_uri)  # fmt: skip
    try:
        yield tracked
    except BaseException:
        tracked.close("FAILED")
        raise
