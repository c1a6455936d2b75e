"""``launch_training``: one run as a Ray Train ``TorchTrainer`` — the same ``run_training`` inside every worker.

Ray is a thin adapter here. The worker function reads its rank from the process group Ray built, hands
``run_training`` a :class:`RayReporter` (checkpoints and metrics go through ``ray.train.report``) and the checkpoint
Ray restored, and nothing else differs from a run in one process.

Where things go: the run directory is ``cfg.run_dir`` (written by rank 0, as in one process); resumable checkpoints
live beside it under Ray's storage, ``<output_dir>/ray_results/<name>/step-NNNNNNNN`` by default, not inside the
artefact a registry versions. The Ray run is named after the protpeft run, so a stopped run restarts from its
latest checkpoint when launched again with ``resume``; a launch without ``resume`` starts afresh and clears that
run's old Ray storage (Ray Train V2 would otherwise silently resume from it).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from protpeft.config import RunConfig
from protpeft.errors import ProtpeftError
from protpeft.tracking import MetricLogger
from protpeft.trainer.checkpoints import STATE_FILE
from protpeft.trainer.context import WorkerContext
from protpeft.trainer.fresh_run import start_afresh

__all__ = [
    "RayReporter",
    "TrainingFailed",
    "WorkerError",
    "absolute_paths",
    "launch_training",
    "resolve_resume",
    "root_cause",
    "storage_for",
    "train_worker",
]

STORAGE_DIR = "ray_results"
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
"""Ray Train V2's record of a run's registered checkpoints; its presence makes Ray restore the run."""


class TrainingFailed(ProtpeftError):
    """The Ray Train run failed (after its allowed restarts); the message is the root cause on one line."""


class WorkerError(RuntimeError):
    """A worker's exception re-raised with its type and message only, for exceptions that cannot be unpickled on
    the driver (Ray ships exceptions by pickle; a custom ``__init__`` signature breaks that)."""


# --------------------------------------------------------------------------------------------------------------
# inside each worker


class RayReporter:
    """``run_training``'s reporter inside a Ray Train worker: ``ray.train.report`` on every worker (Ray requires
    that), with a checkpoint where this worker wrote files. After a checkpoint it waits until Ray has *registered*
    it: Ray registers reports asynchronously, and a worker killed before that would restart from the previous
    checkpoint, repeating up to two intervals instead of at most one. Then the worker's scratch copy is removed."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        import ray.train

        wrote = checkpoint_dir is not None and checkpoint_dir.is_dir() and any(checkpoint_dir.iterdir())
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if wrote else None
        name = checkpoint_dir.name if checkpoint_dir is not None else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
        if checkpoint_dir is not None:
            ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
            self.ctx.barrier()
            shutil.rmtree(checkpoint_dir, ignore_errors=True)


def train_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function: ``run_training`` with Ray's rank, reporter and restored checkpoint."""
    import ray.train
    from ray.train.torch import get_device

    from protpeft.trainer.run import run_training

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # not a line per checkpoint in the user's console
    cfg: RunConfig = config["config"]  # the driver's validated object (pickled), not validated again
    ctx = WorkerContext.from_process_group(get_device())
    factory = config.get("logger_factory")
    logger: MetricLogger | None = factory() if factory is not None and ctx.is_leader else None
    scratch = Path(tempfile.mkdtemp(prefix=f"protpeft-{cfg.name}-rank{ctx.rank}-"))
    restored = ray.train.get_checkpoint()  # after a worker-group restart, or when Ray restored the run
    explicit = config.get("resume_from")  # a checkpoint directory named by --resume
    status = "FAILED"
    try:
        with restored.as_directory() if restored is not None else nullcontext(explicit) as resume_from:
            run_training(
                cfg,
                ctx=ctx,
                reporter=RayReporter(ctx),
                logger=logger,
                resume_from=Path(resume_from) if resume_from else None,
                checkpoint_root=scratch,
            )
        status = "FINISHED"
    except Exception as err:
        _raise_picklable(err)
    finally:
        if logger is not None:
            logger.close(status)
        shutil.rmtree(scratch, ignore_errors=True)


def _raise_picklable(err: Exception) -> None:
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
    except Exception:
        raise WorkerError(f"{type(err).__name__}: {err}") from err
    raise err


# --------------------------------------------------------------------------------------------------------------
# on the driver


def storage_for(cfg: RunConfig, storage_path: str | Path | None = None) -> Path:
    """Where Ray keeps this run's checkpoints: ``storage_path`` or ``<output_dir>/ray_results``."""
    return Path(storage_path).expanduser().resolve() if storage_path else (cfg.output_dir / STORAGE_DIR).resolve()


def resolve_resume(resume: str | Path, storage: Path, name: str) -> tuple[Path, str, Path | None]:
    """What ``--resume`` names → ``(storage_path, ray_run_name, explicit_checkpoint)``.

    Accepted: one checkpoint directory (``step-N`` holding ``train_state.json``), a Ray run directory
    (``<storage>/<name>`` holding Ray's checkpoint snapshot), or a protpeft run directory (its checkpoints are found
    under ``<storage>/<its name>``, the storage defaulting to the sibling ``ray_results``).

    Raises:
        ProtpeftError: the path does not exist or holds no checkpoint.
    """
    path = Path(resume).expanduser().resolve()
    if not path.exists():
        raise ProtpeftError(f"--resume {resume}: no such directory")
    if (path / STATE_FILE).is_file():
        return storage, name, path
    candidates = [path, storage / path.name, path.parent / STORAGE_DIR / path.name]
    for ray_run in candidates:
        if (ray_run / SNAPSHOT_FILE).is_file():
            return ray_run.parent, ray_run.name, None
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise ProtpeftError(
        f"--resume {resume}: no checkpoints found (no {STATE_FILE} there, no Ray {SNAPSHOT_FILE} in {looked}); "
        "a run that stopped before its first checkpoint cannot be resumed"
    )


def absolute_paths(cfg: RunConfig) -> RunConfig:
    """Relative paths resolved against the driver's working directory before the config travels to workers, whose
    working directory Ray chooses. A copy with resolved paths, not validated again (paths stay paths)."""

    def resolved(path: Path | None) -> Path | None:
        return Path(path).expanduser().resolve() if path is not None else None

    data = cfg.data.model_copy(update={key: resolved(getattr(cfg.data, key)) for key in _DATA_PATHS})
    engine = cfg.engine.model_copy(update={"deepspeed_config": resolved(cfg.engine.deepspeed_config)})
    base = Path(cfg.model.base).expanduser()
    model = cfg.model.model_copy(update={"base": str(base.resolve())}) if base.exists() else cfg.model
    update = {"output_dir": resolved(cfg.output_dir), "data": data, "engine": engine, "model": model}
    return cfg.model_copy(update=update)


_DATA_PATHS = ("pairs", "sequences", "table", "cache_dir")


def check_inputs(cfg: RunConfig) -> None:
    """Read and validate the run's data on the driver, so an input error names its file and line before any Ray
    process starts (inside a worker it would arrive wrapped in Ray's tracebacks).

    Raises:
        InputError: the data files' problems, each with file and line.
    """
    from protpeft.data.datasets import load_task_data

    load_task_data(cfg.task, cfg.data)


def _prepare_storage(
    cfg: RunConfig, resume: str | Path | None, storage_path: str | Path | None, run_name: str | None
) -> tuple[Path, str, Path | None]:
    storage, name = storage_for(cfg, storage_path), run_name or cfg.name
    explicit = None
    if resume is not None:
        storage, name, explicit = resolve_resume(resume, storage, name)
        if explicit is not None:
            # An explicit checkpoint wins over the run's own record: Ray starts a fresh record of checkpoints
            # (later restarts then resume from what this run reports).
            (storage / name / SNAPSHOT_FILE).unlink(missing_ok=True)
    else:
        start_afresh(cfg.run_dir, storage / name)
    return storage, name, explicit


def root_cause(err: BaseException | str) -> str:
    """One line naming the innermost error of a Ray failure (worker exceptions arrive wrapped several times; Tune
    may hand over just the error's text)."""
    if not isinstance(err, BaseException):
        lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        return lines[-1] if lines else ""
    seen: set[int] = set()
    while id(err) not in seen:
        seen.add(id(err))
        failures = getattr(err, "worker_failures", None)  # ray.train.WorkerGroupError: {rank: exception}
        if failures:
            err = next(iter(failures.values()))
            continue
        nxt = getattr(err, "cause", None) or err.__cause__
        if isinstance(nxt, BaseException):
            err = nxt
            continue
        break
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    # our own errors are messages (keep them whole, on one line); others may carry a traceback (keep its end)
    text = " ".join(lines) if isinstance(err, ProtpeftError | WorkerError) else lines[-1] if lines else ""
    name = type(err).__name__
    if isinstance(err, WorkerError) or text.startswith(name):
        return text
    return f"{name}: {text}" if text else name


SUMMARY_KEYS = ("metrics", "params", "steps", "seconds", "peak_memory_mb", "strategy", "workers", "embedded_sequences")


def _summary(cfg: RunConfig, result: Any, storage: Path, name: str) -> dict[str, Any]:
    """The run's summary from its ``protpeft.json`` (written by rank 0), else from Ray's last reported metrics
    (when the run directory is on another node's disk)."""
    from protpeft.artifact import ARTIFACT_FILE, read_artifact

    if (cfg.run_dir / ARTIFACT_FILE).is_file():
        artifact = read_artifact(cfg.run_dir)
        summary = {key: getattr(artifact, key) for key in SUMMARY_KEYS}
    else:
        metrics = dict(result.metrics or {})
        summary = dict.fromkeys(SUMMARY_KEYS)
        summary.update(metrics=metrics, params={}, steps=metrics.get("step"), workers=cfg.engine.workers)
    checkpoint = result.checkpoint.path if result.checkpoint is not None else None
    summary.update(run_dir=str(cfg.run_dir), checkpoint=checkpoint, ray_run=str(storage / name))
    return summary


def build_trainer(
    cfg: RunConfig,
    storage: Path,
    name: str,
    logger_factory: Any = None,
    resume_from: str | None = None,
    callbacks: list[Any] | None = None,
):
    """The ``TorchTrainer`` of one run: :func:`train_worker` on ``engine.workers`` workers (gloo on CPU, nccl on
    GPU), checkpoints kept and scored as the engine says, restarts after failures; Ray Train restores a run of the
    same ``name`` under ``storage`` from its latest checkpoint. ``cfg`` must hold absolute paths. ``callbacks``:
    Ray Train callbacks (a Tune trial passes Tune's report callback)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from protpeft.trainer.resources import node_cpus, with_worker_cpus

    cfg = with_worker_cpus(cfg, node_cpus())  # engine.cpus_per_worker=auto: the node's CPUs among this run's workers
    engine = cfg.engine
    use_gpu = engine.gpus_per_worker > 0
    resources = {"CPU": engine.cpus_per_worker} | ({"GPU": engine.gpus_per_worker} if use_gpu else {})
    return TorchTrainer(
        train_worker,
        train_loop_config={"config": cfg, "logger_factory": logger_factory, "resume_from": resume_from},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=engine.workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=engine.keep_checkpoints,
                checkpoint_score_attribute=engine.checkpoint_metric,
                checkpoint_score_order=engine.checkpoint_mode,
            ),
            failure_config=ray.train.FailureConfig(max_failures=engine.max_failures),
            callbacks=callbacks,
        ),
    )


def launch_training(
    cfg: RunConfig,
    *,
    address: str | None = None,
    logger_factory: Any = None,
    resume: str | Path | None = None,
    storage_path: str | Path | None = None,
    run_name: str | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` on Ray Train with ``cfg.engine.workers`` workers and return the run's summary.

    Args:
        cfg: the resolved run config.
        address: cluster to join (default ``$RAY_ADDRESS``, else a new local instance).
        logger_factory: picklable zero-argument callable, called in the rank-0 worker, returning its MetricLogger.
        resume: a run directory, a Ray run directory, or a checkpoint directory to continue from.
        storage_path: Ray storage root (shared storage on a multi-node cluster); default ``<output_dir>/ray_results``.
        run_name: Ray run name; default ``cfg.name``. Keep it stable: resuming finds the run by it.

    Returns:
        ``run_dir``, ``metrics`` (final val + test), ``params``, ``steps``, ``seconds``, ``peak_memory_mb``,
        ``strategy``, ``checkpoint`` (latest persisted), ``ray_run``.

    Raises:
        TrainingFailed: the run failed after ``engine.max_failures`` restarts; the message is the root cause.
    """
    from protpeft.trainer.ray_cluster import connect

    cfg = absolute_paths(cfg)
    check_inputs(cfg)  # a file:line error as with --local, before Ray starts or old runs are cleared
    storage, name, explicit = _prepare_storage(cfg, resume, storage_path, run_name)
    connect(address)
    trainer = build_trainer(cfg, storage, name, logger_factory, str(explicit) if explicit else None)
    try:
        result = trainer.fit()
    except Exception as err:  # ray.train.WorkerGroupError / ControllerError wrap the worker's exception
        raise TrainingFailed(f"training {cfg.name} failed: {root_cause(err)}") from err
    if result.error is not None:
        raise TrainingFailed(f"training {cfg.name} failed: {root_cause(result.error)}")
    return _summary(cfg, result, storage, name)
