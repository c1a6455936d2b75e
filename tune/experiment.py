"""``run_search``: a TUNE file as a Ray Tune experiment of Ray Train trials, tracked in MLflow, resumable.

One experiment = one MLflow parent run (``protpeft.tune=experiment``) with every trial as a nested child run. The
search algorithm is Ray Tune's ``BasicVariantGenerator`` (grid / random) or ``OptunaSearch`` behind a
``ConcurrencyLimiter``; ASHA (optional) stops weak trials on the optimizer ``step`` that training reports (Tune's
``training_iteration`` restarts at 0 when a trial resumes, the step does not). Concurrency is the TUNE file's
``max_concurrent``, capped by how many trials' workers the cluster holds at once.

An interrupted experiment (Ctrl+C, a killed driver) resumes with ``Tuner.restore(..., resume_unfinished=True)``:
finished trials are kept as they are, unfinished ones restart and their Train runs continue from their last
checkpoint. After the search ``trials.json`` holds one row per trial (see :func:`collect_trials`); the best finished
trial can be registered, and the robustness report is written (:mod:`protpeft.tune.report`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from protpeft.config import apply_overrides
from protpeft.errors import ProtpeftError
from protpeft.trainer.resources import node_cpus, worker_cpus
from protpeft.trainer.run_summary import best_row
from protpeft.tune.driver import DRIVER_RESOURCES, TRIAL_TAG, TrialContext, train_trial
from protpeft.tune.ledger import (
    FAILED,
    FINISHED,
    INTERRUPTED,
    PENDING,
    STOPPED,
    TrialLedger,
    collect_trials,
    read_json,
    write_json,
)
from protpeft.tune.space import SearchSpec, load_search, restore_search

__all__ = [
    "ExperimentResult",
    "FinishingASHA",
    "TrialLedger",
    "collect_trials",
    "run_search",
    "trial_capacity",
    "with_trial_cpus",
]

SEARCH_FILE = "search.json"
TRIALS_FILE = "trials.json"
TUNER_FILE = "tuner.pkl"


@dataclass
class ExperimentResult:
    experiment_dir: Path
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    interrupted: bool
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    registered: str | None = None
    """``name/version`` of the registered best trial."""
    report: Path | None = None
    """The Markdown report (None while the experiment is unfinished)."""
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def trials_file(self) -> Path:
        return self.experiment_dir / TRIALS_FILE


# --------------------------------------------------------------------------------------------------------------
# set-up: the search, its directory, its MLflow parent run


def trial_capacity(search: SearchSpec, cluster: dict[str, float], nodes: list[float] | None = None) -> int:
    """``max_concurrent``, capped by how many trials' workers fit in the cluster's CPUs and GPUs at once.
    ``nodes``: CPUs of each node, for ``engine.cpus_per_worker=auto`` (default: the cluster as one node).

    Raises:
        ProtpeftError: one trial needs more than the cluster has.
    """
    engine = search.sample_config().engine
    cap = search.spec.search.max_concurrent
    cpus = worker_cpus(engine, nodes or [cluster.get("CPU", 0)], engine.workers * cap)
    for resource, per_worker in (("CPU", cpus), ("GPU", engine.gpus_per_worker)):
        need = engine.workers * per_worker
        if need <= 0:
            continue
        fits = int(cluster.get(resource, 0) / need + 1e-9)
        if fits < 1:
            raise ProtpeftError(
                f"a trial needs {need:g} {resource} ({engine.workers} workers x {per_worker:g}); "
                f"the cluster has {cluster.get(resource, 0):g}"
            )
        cap = min(cap, fits)
    return cap


def with_trial_cpus(search: SearchSpec, nodes: list[float]) -> SearchSpec:
    """``engine.cpus_per_worker=auto`` resolved once for every trial: the nodes' CPUs shared by the workers of
    ``max_concurrent`` trials (what :func:`trial_capacity` assumes), written into the base the trials read."""
    engine = search.sample_config().engine
    if engine.cpus_per_worker == "auto":
        cpus = worker_cpus(engine, nodes, engine.workers * search.spec.search.max_concurrent)
        search.base = apply_overrides(search.base, None, {"engine.cpus_per_worker": cpus})
    return search


def _start_parent_run(search: SearchSpec, uri: str) -> str:
    from protpeft.registry import store
    from protpeft.registry.run_lifecycle import open_run

    cfg = search.sample_config()
    tags = {"protpeft.tune": "experiment", "task": cfg.task, "base_model": cfg.model.base}
    run_id, _ = open_run(cfg.tracking.experiment, search.name, tags, uri)
    client = store.client(uri)
    settings = search.spec.search
    params = {
        "search.algorithm": settings.algorithm,
        "search.num_samples": settings.samples,
        "search.max_concurrent": settings.max_concurrent,
        "search.metric": settings.metric,
        "search.mode": settings.mode,
        "search.seed": settings.seed,
        "asha.enabled": search.spec.asha.enabled,
    }
    params.update({f"space.{k}": json.dumps(d.model_dump(exclude_none=True)) for k, d in search.spec.space.items()})
    for key, value in params.items():
        client.log_param(run_id, key, str(value)[:6000])
    client.log_dict(run_id, search.to_dict(), "search.json")
    return run_id


def _prepare(
    tune_file: str | Path, resume: bool, storage: str | None = None
) -> tuple[SearchSpec, Path, dict[str, Any]]:
    """The search, its experiment directory and its saved state (tracking URI, parent run) — created for a new
    experiment, read back for a resumed one. ``storage`` (``--storage``) becomes the trials' ``engine.storage``."""
    from protpeft.trainer.ray_launch import absolute_paths

    path = Path(tune_file)
    if path.is_dir():
        if not resume:
            raise ProtpeftError(f"{path} is an experiment directory: add --resume to continue it")
        exp_dir = path.resolve()
    else:
        search = load_search(path)
        exp_dir = search.experiment_dir()
    saved = read_json(exp_dir / SEARCH_FILE, None)
    if resume:
        if saved is None or not (exp_dir / TUNER_FILE).is_file():
            raise ProtpeftError(f"nothing to resume at {exp_dir}: no experiment was started there")
        return restore_search(saved["search"]), exp_dir, saved
    if (exp_dir / TUNER_FILE).is_file() or saved is not None:
        raise ProtpeftError(
            f"experiment {exp_dir} exists: continue it with --resume, or choose another name (or remove it)"
        )
    sample = absolute_paths(search.sample_config())  # a trial runs in Tune's trial directory, not here
    search.base = sample.to_dict()
    if storage is not None:
        search.base["engine"]["storage"] = storage
    uri = None
    if sample.tracking.mlflow:
        from protpeft.registry.store import ensure_store

        uri = ensure_store()  # created once here, before trials write to it in parallel
    exp_dir.mkdir(parents=True, exist_ok=True)
    state = {"search": search.to_dict(), "tracking_uri": uri, "parent_run_id": None, "created": time.time()}
    if uri is not None:
        state["parent_run_id"] = _start_parent_run(search, uri)
    write_json(exp_dir / SEARCH_FILE, state)
    return search, exp_dir, state


def _trial_storage(search: SearchSpec, exp_dir: Path) -> Any:
    """``<engine.storage>/<experiment>/train`` when the search's base config names a storage, else None."""
    from protpeft.trainer.storage import RunStorage

    root = (search.base.get("engine") or {}).get("storage")
    return RunStorage.parse(f"{str(root).rstrip('/')}/{exp_dir.name}/train") if root else None


class FinishingASHA(ASHAScheduler):
    """ASHA that lets a trial at its last step (``max_t``) finish.

    Ray's ASHA has a rung at ``max_t`` whenever ``max_t / grace_period`` is a power of the reduction factor, and
    stops trials that reach ``max_t``; either stops a trial at its last evaluation, before it writes its artefact
    and final (test) metrics, leaving a fully trained trial without a result. Rungs below ``max_t`` still stop weak
    trials early. (Module level: Tune pickles the scheduler with the experiment, for --resume.)
    """

    def on_trial_result(self, tune_controller, trial, result):
        if result.get(self._time_attr, 0) >= self._max_t:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def _tune_config(search: SearchSpec, capacity: int):
    from ray import tune
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    settings, asha = search.spec.search, search.spec.asha
    scheduler = None
    if asha.enabled:
        scheduler = FinishingASHA(
            time_attr="step",
            max_t=search.asha_max_t(),
            grace_period=asha.grace_period,
            reduction_factor=asha.reduction_factor,
        )
    if settings.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        algorithm = ConcurrencyLimiter(OptunaSearch(seed=settings.seed), max_concurrent=capacity)
    else:
        algorithm = BasicVariantGenerator(random_state=settings.seed, max_concurrent=capacity)
    return tune.TuneConfig(
        metric=settings.metric,
        mode=settings.mode,
        num_samples=settings.samples,
        search_alg=algorithm,
        scheduler=scheduler,
    )


# --------------------------------------------------------------------------------------------------------------
# after the search: MLflow bookkeeping, registration


def _close_runs(rows: list[dict[str, Any]], uri: str, parent_run_id: str, metric: str, best, interrupted: bool):
    """Give every child run its trial's end (a trial stopped by ASHA or an interruption was killed before it could
    say so) and its id in the row; record the best trial on the parent run."""
    from protpeft.registry import store

    client = store.client(uri)
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )
    by_trial = {run.data.tags.get(TRIAL_TAG): run for run in children}
    status = {STOPPED: "KILLED", INTERRUPTED: "KILLED", FAILED: "FAILED"}
    for row in rows:
        run = by_trial.get(row["trial_id"])
        if run is None:
            continue
        row["mlflow_run_id"] = run.info.run_id
        client.set_tag(run.info.run_id, "protpeft.tune.state", row["state"])
        if row["state"] in status and run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status[row["state"]])
    counts = {s: sum(r["state"] == s for r in rows) for s in (FINISHED, STOPPED, FAILED, PENDING, INTERRUPTED)}
    for state, n in counts.items():
        client.log_metric(parent_run_id, f"trials_{state.lower()}", n)
    if best is not None:
        client.set_tag(parent_run_id, "best_trial_id", best["trial_id"])
        client.log_metric(parent_run_id, f"best_{metric}", best["metrics"][metric])
    client.set_terminated(parent_run_id, "KILLED" if interrupted else "FINISHED")


def run_search(
    tune_file: str | Path,
    *,
    address: str | None = None,
    resume: bool = False,
    storage: str | None = None,
    register_best: str | None = None,
    alias: str | None = None,
    callbacks: list[Any] | None = None,
    report: bool = True,
) -> ExperimentResult:
    """Run (or resume) the hyperparameter search of ``tune_file`` and write ``trials.json`` and the report.

    Args:
        tune_file: a TUNE.yaml; with ``resume`` also its experiment directory.
        address: cluster to join (default ``$RAY_ADDRESS``, else a new local instance).
        storage: where the trials' checkpoints and artefacts go (``engine.storage`` of every trial: a directory
            shared by all nodes, or ``s3://bucket/prefix``; default ``<experiment>/train``).
        resume: continue the experiment: finished trials are kept, unfinished ones continue from their checkpoints.
        register_best: register the best finished trial's run directory under this model name.
        alias: with ``register_best``, the alias the new version gets (e.g. ``champion``).
        callbacks: extra Ray Tune callbacks (on resume, Tune restores those of the first run instead).
        report: write the robustness report when the search completes (and log it to the parent MLflow run).

    Returns:
        The trials, the best one, whether the run was interrupted, and where things were written.

    Raises:
        ConfigError: an invalid TUNE file. ProtpeftError: a new experiment whose directory exists, nothing to
        resume, or trials that cannot fit in the cluster.
    """
    from ray import tune

    from protpeft.trainer.cluster_checks import check_storage_shared, driver_node_pin, other_training_nodes
    from protpeft.trainer.ray_cluster import connect

    search, exp_dir, state = _prepare(tune_file, resume, storage)
    uri, parent = state.get("tracking_uri"), state.get("parent_run_id")
    connect(address)
    import ray

    search = with_trial_cpus(search, node_cpus())
    context = TrialContext(search.to_dict(), str(exp_dir), uri, parent, _trial_storage(search, exp_dir))
    train_storage = context.train_storage()
    train_storage.check()
    capacity = trial_capacity(search, ray.cluster_resources())
    check_storage_shared(train_storage, other_training_nodes())
    # Trial drivers stay on this machine's node (they read the data, write the trials' run directories and, through
    # their Ray Train controllers, the MLflow store here); only their training workers spread over the cluster.
    resources = {**DRIVER_RESOURCES, **driver_node_pin()}
    trainable = tune.with_resources(tune.with_parameters(train_trial, context=context), resources)
    if resume:
        if uri is not None and parent is not None:
            from protpeft.registry import store

            store.client(uri).update_run(parent, status="RUNNING")
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True)
    else:
        run_config = tune.RunConfig(
            name=exp_dir.name,
            verbose=1,  # the status table as trials start and end; per-result tables would drown it
            storage_path=str(exp_dir.parent),
            callbacks=[TrialLedger(str(exp_dir)), *(callbacks or [])],
            failure_config=tune.FailureConfig(max_failures=search.spec.search.max_trial_failures),
        )
        tuner = tune.Tuner(
            trainable,
            param_space=search.param_space(),
            tune_config=_tune_config(search, capacity),
            run_config=run_config,
        )
    tuner.fit()
    return finish_search(exp_dir, search, uri, parent, register_best=register_best, alias=alias, report=report)


def finish_search(
    exp_dir: Path,
    search: SearchSpec,
    uri: str | None,
    parent: str | None,
    *,
    register_best: str | None = None,
    alias: str | None = None,
    report: bool = True,
) -> ExperimentResult:
    """After ``Tuner.fit``: trials.json, MLflow end states, the best trial's registration, the report."""
    settings = search.spec.search
    rows = collect_trials(exp_dir, search)
    interrupted = any(r["state"] in (PENDING, INTERRUPTED) for r in rows) or len(rows) == 0
    best = best_row(rows, settings.metric, settings.mode)
    if uri is not None and parent is not None:
        _close_runs(rows, uri, parent, settings.metric, best, interrupted)
    registered = None
    if register_best and best is not None and not interrupted:
        from protpeft.registry import register_run

        version = register_run(
            best["run_dir"], register_best, alias, mlflow_run_id=best["mlflow_run_id"], tracking_uri=uri
        )
        registered = f"{version.name}/{version.version}"
    counts = {s: sum(r["state"] == s for r in rows) for s in (FINISHED, STOPPED, FAILED, PENDING, INTERRUPTED)}
    write_json(
        exp_dir / TRIALS_FILE,
        {
            "experiment": search.name,
            "experiment_dir": str(exp_dir),
            "metric": settings.metric,
            "mode": settings.mode,
            "algorithm": settings.algorithm,
            "asha": search.spec.asha.enabled,
            "space": {k: d.model_dump(exclude_none=True) for k, d in search.spec.space.items()},
            "log_scale": [k for k, d in search.spec.space.items() if d.log_scale()],
            "parent_run_id": parent,
            "tracking_uri": uri,
            "interrupted": interrupted,
            "counts": counts,
            "best_trial_id": best["trial_id"] if best else None,
            "registered": registered,
            "trials": rows,
        },
    )
    report_path = None
    if report and not interrupted:
        from protpeft.tune.report import log_report, write_report

        files = write_report(exp_dir)
        report_path = files.markdown
        if uri is not None and parent is not None:
            log_report(files, uri, parent)
    return ExperimentResult(exp_dir, rows, best, interrupted, parent, uri, registered, report_path, counts)
