"""The trial driver: what Ray Tune runs for one trial — a Ray Train run of the trial's config.

A trial is a Tune function (:func:`train_trial`) that builds the trial's :class:`~protpeft.config.RunConfig` from
its sampled values, opens the trial's MLflow child run and fits a ``TorchTrainer`` over the same worker function as
``protpeft train`` (:func:`protpeft.trainer.ray_launch.build_trainer`). Train's ``TuneReportCallback`` forwards every
evaluation (``val_*`` metrics and ``step``) to Tune, where ASHA reads them; after the run the driver reports the
final summary (val + test metrics, ``embedded_sequences``, run directory, MLflow run id) once more.

Names are stable so an interrupted experiment resumes: the Train run of trial ``T`` is ``train-trial_id=T`` under
``<experiment>/train`` (Ray Train restores it from its last checkpoint), its run directory
``<experiment>/trials/trial-T``, and its MLflow child run is found again by its tags. The driver itself holds no CPU
(Tune refuses an empty resource request, so it asks for one byte of ``memory``): each trial's workers get the CPUs.

Layout of an experiment directory (with a storage, Ray Tune's files and ``train/`` are in ``<storage>/<name>``
instead, with copies of protpeft's files: :mod:`protpeft.tune.experiment_files`)::

    <name>/                      Ray Tune's experiment (tuner.pkl, experiment_state-*.json, one folder per trial)
      search.json                the resolved search, its MLflow parent run and tracking URI (for --resume)
      trials/trial-<trial_id>/   each trial's protpeft run directory (registrable)
      train/train-trial_id=<id>/ each trial's Ray Train storage (checkpoints, the published artefact)
      attempts.jsonl             one line per driver start (a resumed trial shows a second start)
      ledger/                    how each trial ended, and a snapshot of all trials at the end of a run
      trials.json                one row per trial, written by the experiment; read by the report
      report/                    report.md, report.html and the PNG plots
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protpeft.config import RunConfig
from protpeft.tune.space import SearchSpec, restore_search

__all__ = [
    "DRIVER_RESOURCES",
    "TRIAL_TAG",
    "TrialContext",
    "train_trial",
    "train_run_name",
    "trial_run_dir",
]

DRIVER_RESOURCES = {"memory": 1}
"""The trial driver's own request: one byte of memory. It only waits on its Train run, whose workers ask for the
CPUs and GPUs; a CPU fraction (e.g. 0.01) would leave a full node unable to place a 1-CPU worker."""
TRIAL_TAG = "protpeft.trial_id"
"""MLflow tag naming a child run's Tune trial (a resumed trial finds its run again by it)."""


def train_run_name(trial_id: str) -> str:
    return f"train-trial_id={trial_id}"


def trial_run_dir(experiment_dir: str | Path, trial_id: str) -> Path:
    """The trial's protpeft run directory, in the experiment directory on the driver."""
    return Path(experiment_dir) / "trials" / f"trial-{trial_id}"


@dataclass(frozen=True)
class TrialContext:
    """What every trial shares (picklable; passed with ``tune.with_parameters``)."""

    search: dict[str, Any]
    """``SearchSpec.to_dict()`` with the base config's paths already absolute (a trial runs in Tune's trial dir)."""
    experiment_dir: str
    tracking_uri: str | None = None
    """MLflow store; None when the base config turns tracking off."""
    parent_run_id: str | None = None
    storage: Any = None
    """Where the trials' Ray Train runs keep checkpoints and artefacts: a
    :class:`~protpeft.trainer.storage.RunStorage`, ``<experiment>/train`` in the experiment's storage or directory.
    Parsed in the user's process, so the filesystem object carries the endpoint and credentials read there: a trial
    runs where those variables may not be set."""

    @property
    def spec(self) -> SearchSpec:
        return restore_search(self.search)

    def trial_config(self, sampled: dict[str, Any], trial_id: str) -> RunConfig:
        """The trial's run config: base + sampled values, named after the trial, never registering by itself."""
        spec = self.spec
        run_dir = trial_run_dir(self.experiment_dir, trial_id)
        identity = {
            "name": run_dir.name,
            "output_dir": str(run_dir.parent),
            "tracking.register_as": None,
            "tracking.alias": None,
        }
        return spec.trial_config(spec.decode(sampled), identity)

    def record_attempt(self, trial_id: str) -> None:
        line = json.dumps({"trial_id": trial_id, "time": round(time.time(), 3), "pid": os.getpid()})
        with open(Path(self.experiment_dir) / "attempts.jsonl", "a") as fh:  # one short append: atomic on POSIX
            fh.write(line + "\n")

    def tracking(self, cfg: RunConfig, trial_id: str) -> Any:
        """The trial's tracked run: its MLflow child run, created, or reopened when a resumed trial already has one
        (:class:`~protpeft.registry.run_lifecycle.TrackedRun`; without an MLflow run when tracking is off)."""
        from protpeft.registry.run_lifecycle import TrackedRun, create_run, reopen_run

        if self.tracking_uri is None:
            return TrackedRun()
        from protpeft.registry import store

        client = store.client(self.tracking_uri)
        experiment = client.get_experiment_by_name(cfg.tracking.experiment)
        if experiment is not None and self.parent_run_id is not None:
            query = f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'"
            found = client.search_runs([experiment.experiment_id], filter_string=query, max_results=1)
            if found:
                return TrackedRun(reopen_run(found[0].info.run_id, self.tracking_uri))
        name = f"{Path(self.experiment_dir).name}-{trial_id}"
        factory = create_run(cfg, self.tracking_uri, parent_run_id=self.parent_run_id, run_name=name)
        client.set_tag(factory.run_id, TRIAL_TAG, trial_id)
        return TrackedRun(factory)


def final_result(cfg: RunConfig, run_id: str | None) -> dict[str, Any]:
    """The trial's last Tune result: its run directory's summary (final val + test metrics, steps, embedded
    sequences); ``run_dir`` in a result marks a trial that trained to the end."""
    from protpeft.artifact import read_artifact

    artifact = read_artifact(cfg.run_dir)
    result = {k: v for k, v in artifact.metrics.items() if isinstance(v, int | float)}
    result.update(
        step=artifact.steps,
        embedded_sequences=artifact.embedded_sequences,
        prefix_forwards=artifact.prefix_forwards,
        seconds=artifact.seconds,
        trainable_params=artifact.params.get("trainable"),
        run_dir=str(cfg.run_dir),
        mlflow_run_id=run_id,
    )
    return result


def train_trial(config: dict[str, Any], context: TrialContext) -> None:
    """One Tune trial: a Ray Train run of the trial's config, reported to Tune as it trains and once at the end.

    Raises:
        TrainingFailed: the Train run failed (after ``engine.max_failures`` restarts); Tune records the trial as
            errored (and retries it ``search.max_trial_failures`` times).
    """
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from protpeft.trainer.ray_launch import (
        TrainingFailed,
        build_trainer,
        check_inputs,
        cluster_inputs,
        finish_run,
        published,
        root_cause,
    )

    trial_id = tune.get_context().get_trial_id()
    cfg = context.trial_config(config, trial_id)
    context.record_attempt(trial_id)
    storage = context.storage
    data = check_inputs(cfg)
    base, _ = cluster_inputs(cfg, storage, check_shared=False)  # the experiment checked it once for all trials
    # The trial's MLflow run is ended by the experiment, which knows how each trial ended (finished, stopped by
    # ASHA, interrupted, failed): a trial stopped from outside may see its Train run abort like a failure.
    run = context.tracking(cfg, trial_id)
    if run.logger_factory is not None:
        run.logger_factory().log_config(cfg.to_dict())
    trainer = build_trainer(
        cfg, storage, train_run_name(trial_id), tracking=run.logger_factory, callbacks=[TuneReportCallback()],
        data=data, base=base, live_logs=False,
    )  # fmt: skip
    try:
        result = trainer.fit()
    except Exception as err:  # WorkerGroupError / ControllerError wrap the worker's exception
        raise TrainingFailed(f"trial {trial_id} failed: {root_cause(err)}") from None
    if result.error is None and not published(result):
        return  # stopped by the scheduler (ASHA) or an interruption
    finish_run(cfg, result, run.logger_factory)
    tune.report(final_result(cfg, run.run_id))
