"""``run_search``: a TUNE file as a Ray Tune experiment of Ray Train trials, tracked in MLflow, resumable.

One experiment = one MLflow parent run (``protpeft.tune=experiment``) with every trial as a nested child run. The
search algorithm is Ray Tune's ``BasicVariantGenerator`` (grid / random) or ``OptunaSearch`` behind a
``ConcurrencyLimiter``; ASHA (optional) stops weak trials on the optimizer ``step`` that training reports (Tune's
``training_iteration`` restarts at 0 when a trial resumes, the step does not). Concurrency is the TUNE file's
``max_concurrent``, capped by how many trials' workers the cluster holds at once.

An interrupted experiment (Ctrl+C, a killed driver) resumes with ``Tuner.restore(..., resume_unfinished=True)``:
finished trials are kept as they are, unfinished ones restart and their Train runs continue from their last
checkpoint. With a storage (``--storage s3://...``) the experiment is kept there
(:mod:`protpeft.tune.experiment_files`) and resumes from any machine: ``tune --resume EXPERIMENT --storage STORAGE``.
After the search ``trials.json`` holds one row per trial (see :func:`collect_trials`); the best finished trial can be
registered, and the robustness report is written (:mod:`protpeft.tune.outcome`, :mod:`protpeft.tune.report`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from protpeft.config import apply_overrides
from protpeft.errors import ProtpeftError
from protpeft.trainer.resources import node_cpus, worker_cpus
from protpeft.tune.driver import DRIVER_RESOURCES, TrialContext, train_trial
from protpeft.tune.experiment_files import SEARCH_FILE, ExperimentFiles, read_json
from protpeft.tune.ledger import TrialLedger, collect_trials
from protpeft.tune.outcome import ExperimentResult, finish_search
from protpeft.tune.space import SearchSpec, load_search, restore_search

logger = logging.getLogger(__name__)

__all__ = [
    "ExperimentResult",
    "FinishingASHA",
    "TrialLedger",
    "collect_trials",
    "run_search",
    "trial_capacity",
    "with_trial_cpus",
]

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
) -> tuple[SearchSpec, ExperimentFiles, dict[str, Any]]:
    """The search, its files and its saved state (tracking URI, parent run) — created for a new experiment, read
    back for a resumed one. ``storage`` (``--storage``) becomes the trials' ``engine.storage`` and keeps the
    experiment; on resume it finds the experiment there, by the experiment directory's name (which need not exist
    here) or the TUNE file's."""
    path = Path(tune_file)
    if resume and not path.is_file():
        return _resumed(path.expanduser().resolve(), storage)
    if path.is_dir():
        raise ProtpeftError(f"{path} is an experiment directory: add --resume to continue it")
    search = load_search(path)
    if resume:
        return _resumed(search.experiment_dir(), storage)
    return _started(search, storage)


def _started(search: SearchSpec, storage: str | None) -> tuple[SearchSpec, ExperimentFiles, dict[str, Any]]:
    """A new experiment: its storage checked, then its saved state and MLflow parent run created."""
    from protpeft.trainer.ray_launch import for_workers
    from protpeft.trainer.storage import RunStorage

    exp_dir = search.experiment_dir()
    sample = for_workers(search.sample_config())  # a trial runs in Tune's trial directory, not here
    search.base = sample.to_dict()
    if storage is not None:
        search.base["engine"]["storage"] = RunStorage.parse(storage).uri  # absolute: resumed from anywhere
    files = ExperimentFiles.at(exp_dir, search.base["engine"].get("storage"))
    if files.storage is not None:
        files.storage.check()  # one line before anything is written
    if files.started() or (exp_dir / SEARCH_FILE).is_file() or files.stored(SEARCH_FILE):
        raise ProtpeftError(
            f"experiment {files.where} exists: continue it with --resume, or choose another name (or remove it)"
        )
    uri = None
    if sample.tracking.mlflow:
        from protpeft.registry.store import ensure_store

        uri = ensure_store()  # created once here, before trials write to it in parallel
    exp_dir.mkdir(parents=True, exist_ok=True)
    state = {"search": search.to_dict(), "tracking_uri": uri, "parent_run_id": None, "created": time.time()}
    if uri is not None:
        state["parent_run_id"] = _start_parent_run(search, uri)
    files.write(SEARCH_FILE, state)
    return search, files, state


def _resumed(exp_dir: Path, storage: str | None) -> tuple[SearchSpec, ExperimentFiles, dict[str, Any]]:
    """An experiment to continue: kept in ``storage`` (or the storage its saved state names), its files brought
    back into ``exp_dir`` where missing; or kept in ``exp_dir`` itself."""
    from protpeft.trainer.storage import RunStorage

    if storage:
        root = RunStorage.parse(storage).uri
    else:  # the storage this directory's experiment was started with, if any
        here = read_json(exp_dir / SEARCH_FILE, {})
        root = (here.get("search", {}).get("base", {}).get("engine") or {}).get("storage")
    files = ExperimentFiles.at(exp_dir, root)
    if files.storage is not None:
        files.storage.check()
        files.download_missing()
    saved = read_json(exp_dir / SEARCH_FILE, None)
    if saved is None or not files.started():
        hint = "" if storage else " (an experiment kept in object storage resumes with --storage s3://BUCKET/PREFIX)"
        raise ProtpeftError(f"nothing to resume at {files.where}: no experiment was started there{hint}")
    if storage:
        saved["search"]["base"].setdefault("engine", {})["storage"] = root
    return restore_search(saved["search"]), files, saved


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
# the search


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
        tune_file: a TUNE.yaml; with ``resume`` also its experiment directory (with ``storage``, one that need not
            exist here: the experiment is found in the storage by the directory's name).
        address: cluster to join (default ``$RAY_ADDRESS``, else a new local instance).
        storage: where the experiment is kept (``<storage>/<experiment>``: Ray Tune's experiment, the trials'
            checkpoints and artefacts in ``train/``, copies of protpeft's files; ``engine.storage`` of every trial): a
            directory shared by all nodes, or ``s3://bucket/prefix``; default: the experiment directory. With
            ``resume``, where to find the experiment (default: the storage it was started with).
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

    search, files, state = _prepare(tune_file, resume, storage)
    uri, parent = state.get("tracking_uri"), state.get("parent_run_id")
    connect(address)
    import ray

    search = with_trial_cpus(search, node_cpus())
    train_storage = files.train_storage()
    train_storage.check()
    context = TrialContext(search.to_dict(), str(files.local), uri, parent, train_storage)
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
        tuner = tune.Tuner.restore(**files.tune_restore(), trainable=trainable, resume_unfinished=True)
        _ledger_writes_here(tuner, files)
    else:
        run_config = tune.RunConfig(
            **files.tune_location(),
            verbose=1,  # the status table as trials start and end; per-result tables would drown it
            callbacks=[TrialLedger(files), *(callbacks or [])],
            failure_config=tune.FailureConfig(max_failures=search.spec.search.max_trial_failures),
        )
        tuner = tune.Tuner(
            trainable,
            param_space=search.param_space(),
            tune_config=_tune_config(search, capacity),
            run_config=run_config,
        )
    before = _held_placement_groups()
    tuner.fit()
    result = finish_search(files, search, uri, parent, register_best=register_best, alias=alias, report=report)
    _release_placement_groups(before, interrupted=result.interrupted)
    return result


LEAK_SETTLE_S = 3.0
"""After an interruption, how long the driver keeps removing its trials' leftover placement groups (a Train
controller killed mid-start registers its last one within a second; see :mod:`protpeft.trainer.placement_groups`)."""


def _held_placement_groups() -> set[str] | None:
    """This job's placement groups before the search (None where they cannot be listed, e.g. through Ray Client)."""
    from protpeft.trainer.placement_groups import job_placement_groups

    try:
        return job_placement_groups()
    except Exception as err:  # noqa: BLE001 - a best-effort cleanup must never fail the search
        logger.debug("placement groups cannot be listed here (%s); leftovers will not be released", err)
        return None


def _release_placement_groups(before: set[str] | None, *, interrupted: bool) -> None:
    """Remove the placement groups the search's trials left behind (none unless a trial was killed mid-start)."""
    from protpeft.trainer.placement_groups import release_placement_groups

    if before is None:
        return
    try:
        removed = release_placement_groups(before, settle_s=LEAK_SETTLE_S if interrupted else 0.0)
    except Exception as err:  # noqa: BLE001 - the search's results are written; a failed cleanup must not fail it
        logger.warning("could not release the placement groups left by stopped trials: %s", err)
        return
    if removed:
        logger.info("released %d placement group(s) left by stopped trials: %s", len(removed), ", ".join(removed))


def _ledger_writes_here(tuner: Any, files: ExperimentFiles) -> None:
    """Tune restores an experiment's callbacks from its own pickle, so the ledger would write into the directory
    the experiment was first run in (another machine's, or a directory since removed): point it at this one."""
    internal = getattr(tuner, "_local_tuner", None)
    if internal is None:  # through Ray Client the tuner and its callbacks run on the cluster
        return
    for callback in internal.get_run_config().callbacks or []:
        if isinstance(callback, TrialLedger):
            callback.files = files
