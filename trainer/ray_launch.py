"""``launch_training``: one run as a Ray Train ``TorchTrainer`` — the same ``run_training`` inside every worker
(:mod:`protpeft.trainer.ray_worker`), on one machine or on a cluster whose nodes share no disk.

The driver does everything that needs the user's files, before any worker starts: it reads and validates the data
(file:line errors as with ``--local``), checks the storage (:mod:`protpeft.trainer.storage`: a directory or an
object store), checks the cluster has the resources asked for and, on several nodes, that the storage is shared by
all of them, and stages a local base model into the storage (:mod:`protpeft.trainer.staging`). Workers get the data
through Ray's object store and write checkpoints and the finished artefact to the storage through Ray Train's own
checkpointing; their metric records reach a callback on the driver's node that writes ``metrics.jsonl`` and MLflow
(:mod:`protpeft.trainer.driver_tracking`). When ``fit`` returns, the driver copies the artefact into the run
directory (:mod:`protpeft.trainer.ray_run_store`) and logs it to MLflow.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from protpeft.config import RunConfig
from protpeft.data.datasets import TaskData
from protpeft.trainer.checkpoints import STATE_FILE
from protpeft.trainer.ray_errors import TrainingFailed, root_cause
from protpeft.trainer.ray_run_store import SNAPSHOT_FILE, STORAGE_DIR, fetch_artifact, prepare_run, run_storage
from protpeft.trainer.ray_worker import WorkerError, is_artifact, train_worker
from protpeft.trainer.staging import StagedDir, stage_dir
from protpeft.trainer.storage import RunStorage

__all__ = [
    "SNAPSHOT_FILE",
    "STORAGE_DIR",
    "TrainingFailed",
    "WorkerError",
    "build_trainer",
    "check_inputs",
    "cluster_inputs",
    "finish_run",
    "for_workers",
    "launch_training",
    "published",
    "root_cause",
    "run_storage",
    "train_worker",
]


def for_workers(cfg: RunConfig) -> RunConfig:
    """The config as it travels to workers, made on the driver: relative paths resolved against the driver's working
    directory (a worker's is Ray's choice), and a DeepSpeed JSON file read and checked here (``file:line`` errors
    before any Ray process starts) and carried as its content, so no node but the driver needs the file. A copy,
    not validated again (paths stay paths).

    Raises:
        ConfigError: the DeepSpeed JSON file is unreadable, not JSON, or not usable.
    """
    from protpeft.config import read_deepspeed_json

    def resolved(path: Path | None) -> Path | None:
        return Path(path).expanduser().resolve() if path is not None else None

    data = cfg.data.model_copy(update={key: resolved(getattr(cfg.data, key)) for key in _DATA_PATHS})
    deepspeed = cfg.engine.deepspeed_config
    if isinstance(deepspeed, Path):
        deepspeed = read_deepspeed_json(deepspeed.expanduser())
    engine = cfg.engine.model_copy(update={"deepspeed_config": deepspeed})
    base = Path(cfg.model.base).expanduser()
    model = cfg.model.model_copy(update={"base": str(base.resolve())}) if base.exists() else cfg.model
    update = {"output_dir": resolved(cfg.output_dir), "data": data, "engine": engine, "model": model}
    return cfg.model_copy(update=update)


_DATA_PATHS = ("pairs", "sequences", "table", "cache_dir")


def check_inputs(cfg: RunConfig) -> TaskData:
    """Read and validate the run's data on the driver, so an input error names its file and line before any Ray
    process starts (inside a worker it would arrive wrapped in Ray's tracebacks). The data then travels to the
    workers through Ray: they never open the driver's files.

    Raises:
        InputError: the data files' problems, each with file and line.
    """
    from protpeft.data.datasets import load_task_data

    return load_task_data(cfg.task, cfg.data)


SUMMARY_KEYS = (
    "metrics", "params", "steps", "seconds", "peak_memory_mb", "strategy", "workers", "embedded_sequences",
    "prefix_forwards",
)  # fmt: skip


def published(result: Any) -> bool:
    """Whether a Ray Train run ended with its artefact published (its last checkpoint): not so for a run stopped
    from outside (a Tune scheduler) before it finished."""
    return is_artifact(result.checkpoint)


def finish_run(cfg: RunConfig, result: Any, tracking: Any = None) -> dict[str, Any]:
    """After ``fit``: the artefact copied from storage into the run directory, logged to the MLflow run
    ``tracking`` (a logger factory; the run is then FINISHED), and the run's summary."""
    from protpeft.artifact import read_artifact

    if result.error is not None:
        raise TrainingFailed(f"training {cfg.name} failed: {root_cause(result.error)}")
    fetch_artifact(result, cfg.run_dir)
    artifact = read_artifact(cfg.run_dir)
    if tracking is not None:
        tracking().log_run_dir(cfg.run_dir, artifact)
    summary = {key: getattr(artifact, key) for key in SUMMARY_KEYS}
    summary.update(run_dir=str(cfg.run_dir), checkpoint=result.checkpoint.path)
    return summary


def build_trainer(
    cfg: RunConfig,
    storage: RunStorage,
    name: str,
    *,
    tracking: Any = None,
    resume_from: str | None = None,
    callbacks: list[Any] | None = None,
    data: TaskData | None = None,
    base: StagedDir | None = None,
    live_logs: bool = True,
    worker: Callable[[dict[str, Any]], None] = train_worker,
):
    """The ``TorchTrainer`` of one run: :func:`train_worker` on ``engine.workers`` workers (gloo on CPU, nccl on
    GPU), checkpoints in ``storage`` under ``name`` kept and scored as the engine says, restarts after failures;
    Ray Train restores a run of the same ``name`` in ``storage`` from its latest checkpoint. ``cfg`` must hold
    absolute paths.

    ``tracking``: the MLflow run's logger factory, called on the driver's node by the tracking callback.
    ``callbacks``: more Ray Train callbacks (a Tune trial passes Tune's report callback). ``data``: the task data
    the driver read. ``base``: the staged base model. ``live_logs``: report the training loss as it is logged (off
    in Tune, whose every result must carry the searched metric). ``worker``: the worker function (tests wrap
    :func:`train_worker` to inject faults)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from protpeft.trainer.driver_tracking import TrackingCallback
    from protpeft.trainer.ray_cluster import train_env
    from protpeft.trainer.resources import node_cpus, with_worker_cpus

    train_env()  # read by TorchTrainer.fit(), which hands them to the Train controller
    cfg = with_worker_cpus(cfg, node_cpus())  # engine.cpus_per_worker=auto: the node's CPUs among this run's workers
    engine = cfg.engine
    use_gpu = engine.gpus_per_worker > 0
    resources = {"CPU": engine.cpus_per_worker} | ({"GPU": engine.gpus_per_worker} if use_gpu else {})
    loop_config = {
        "config": cfg,
        "data": data,
        "base": base,
        "run_id": getattr(tracking, "run_id", None),
        "live_logs": live_logs,
        "resume_from": resume_from,
    }
    return TorchTrainer(
        worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=engine.workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            **storage.for_ray(),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=engine.keep_checkpoints,
                checkpoint_score_attribute=engine.checkpoint_metric,
                checkpoint_score_order=engine.checkpoint_mode,
            ),
            failure_config=ray.train.FailureConfig(max_failures=engine.max_failures),
            callbacks=[TrackingCallback(cfg.run_dir / "metrics.jsonl", tracking), *(callbacks or [])],
        ),
    )


def cluster_inputs(cfg: RunConfig, storage: RunStorage, *, check_shared: bool = True) -> tuple[StagedDir | None, bool]:
    """On the cluster joined (before any worker starts): the job's resources fit; on several nodes, ``storage`` is
    one place for all of them (unless ``check_shared`` is off: the caller checked it once for many runs) and a base
    model given as a directory here is staged into it. Returns the staged base (or None) and whether other nodes
    train.

    Raises:
        ClusterError / StorageError: one line saying what to pass instead.
    """
    from protpeft.trainer.cluster_checks import check_resources, check_storage_shared, other_training_nodes
    from protpeft.trainer.resources import node_cpus, with_worker_cpus

    check_resources(with_worker_cpus(cfg, node_cpus()))
    others = other_training_nodes()
    if check_shared:
        check_storage_shared(storage, others)
    base = Path(cfg.model.base)
    staged = stage_dir(storage, base, "base") if others and base.is_dir() else None
    return staged, bool(others)


def launch_training(
    cfg: RunConfig,
    *,
    address: str | None = None,
    logger_factory: Any = None,
    resume: str | Path | None = None,
    storage_path: str | Path | RunStorage | None = None,
    storage_checked: bool = False,
    run_name: str | None = None,
    worker: Callable[[dict[str, Any]], None] = train_worker,
) -> dict[str, Any]:
    """Train ``cfg`` on Ray Train with ``cfg.engine.workers`` workers and return the run's summary.

    Args:
        cfg: the resolved run config.
        address: cluster to join (default ``$RAY_ADDRESS``, else a new local instance).
        logger_factory: picklable zero-argument callable returning the MLflow run's logger; called on the driver's
            node (config, metric records, the finished run), never in a worker.
        resume: a run directory or name, a Ray run directory, or a checkpoint directory to continue from.
        storage_path: where checkpoints and the artefact go (``--storage``: a directory or ``s3://bucket/prefix``;
            default ``engine.storage``, else ``<output_dir>/ray_results``), or that location already parsed (its
            filesystem carries the credentials read where it was parsed).
        storage_checked: the caller has checked the storage (:meth:`RunStorage.check`, and on a cluster that every
            training node shares it) for this run and others: run-many checks once for all its jobs.
        run_name: Ray run name; default ``cfg.name``. Keep it stable: resuming finds the run by it.
        worker: the worker function (see :func:`build_trainer`).

    Returns:
        ``run_dir``, ``metrics`` (final val + test), ``params``, ``steps``, ``seconds``, ``peak_memory_mb``,
        ``strategy``, ``checkpoint`` (the artefact's place in storage), ``ray_run``.

    Raises:
        StorageError / ClusterError: storage or cluster unusable as given (before any worker starts).
        TrainingFailed: the run failed after ``engine.max_failures`` restarts; the message is the root cause.
    """
    from protpeft.trainer.ray_cluster import connect

    cfg = for_workers(cfg)
    data = check_inputs(cfg)  # a file:line error as with --local, before Ray starts or old runs are cleared
    storage = storage_path if isinstance(storage_path, RunStorage) else run_storage(cfg, storage_path)
    if not storage_checked:
        storage.check()
    connect(address)
    base, multi_node = cluster_inputs(cfg, storage, check_shared=not storage_checked)
    if resume is not None and multi_node and (Path(resume) / STATE_FILE).is_file():
        raise TrainingFailed(
            f"--resume {resume}: a checkpoint directory of this machine cannot be read by the cluster's other "
            "nodes; resume by the run's name or run directory (its checkpoints are in the run's storage)"
        )
    storage, name, explicit = prepare_run(cfg, storage, run_name or cfg.name, resume)
    if logger_factory is not None:
        logger_factory().log_config(cfg.to_dict())
    trainer = build_trainer(
        cfg, storage, name, tracking=logger_factory, resume_from=str(explicit) if explicit else None, data=data,
        base=base, worker=worker,
    )  # fmt: skip
    try:
        result = trainer.fit()
    except Exception as err:  # ray.train.WorkerGroupError / ControllerError wrap the worker's exception
        raise TrainingFailed(f"training {cfg.name} failed: {root_cause(err)}") from err
    summary = finish_run(cfg, result, logger_factory)
    summary["ray_run"] = storage.uri_of(name)
    return summary
