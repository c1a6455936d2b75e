"""Inside each Ray Train worker: the same ``run_training`` as in one process, with Ray's rank, a channel to the
driver, the checkpoint Ray restored, and inputs that came through Ray rather than from the driver's disk.

Nothing here opens the driver's files or the tracking store. What a worker produces leaves through
``ray.train.report``: metric records (the leader's log lines) ride on reports, checkpoints and the finished
artefact are Ray Train checkpoints persisted to the run's storage (a local directory or an object store), and the
driver — which may be on another machine — writes the logs and fetches the artefact from there.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protpeft.trainer.context import WorkerContext

if TYPE_CHECKING:
    from protpeft.artifact import RunArtifact
    from protpeft.tracking import MetricLogger
    from protpeft.trainer.staging import StagedDir

__all__ = ["ARTIFACT_CHECKPOINT", "LOG_KEY", "RayChannel", "WorkerError", "is_artifact", "train_worker"]

LOG_KEY = "protpeft_log"
"""The key of a report's metric records: ``[{"step": N, <metrics>}, ...]`` logged by the leader since the last
report (the driver-side tracking callback writes them)."""
ARTIFACT_CHECKPOINT = "artifact"
"""The name of the checkpoint holding the finished run's artefact (the run's last report)."""


def is_artifact(checkpoint: Any) -> bool:
    """Whether a Ray Train checkpoint is a run's published artefact (its last report), not a training state."""
    return checkpoint is not None and Path(checkpoint.path).name == ARTIFACT_CHECKPOINT


class WorkerError(RuntimeError):
    """A worker's exception re-raised with its type and message only, for exceptions that cannot be unpickled on
    the driver (Ray ships exceptions by pickle; a custom ``__init__`` signature breaks that)."""


class RayChannel:
    """``run_training``'s reporter *and* logger inside a Ray Train worker, on every rank.

    As a logger it keeps the leader's metric records (config and run directory are the driver's business); as a
    reporter it calls ``ray.train.report`` on every worker (Ray requires that) with those records attached, with a
    checkpoint where this worker wrote files. ``live``: also report after each periodic training log, so the driver
    sees the loss as it trains (off in Tune trials, where every report must carry the searched metric).

    After a checkpoint it waits until Ray has *registered* it: Ray registers reports asynchronously, and a worker
    killed before that would restart from the previous checkpoint, repeating up to two intervals instead of at most
    one. Then the worker's scratch copy is removed.
    """

    on_every_rank = True

    def __init__(
        self, ctx: WorkerContext, run_id: str | None = None, live: bool = True, watcher: MetricLogger | None = None
    ) -> None:
        self.ctx = ctx
        self.run_id = run_id
        """The driver's MLflow run (recorded in the artefact), or None."""
        self.live = live
        self.watcher = watcher
        """Also told the leader's config and metrics, in the worker, as they are logged (benchmarks, fault tests)."""
        self.records: list[dict[str, Any]] = []

    # ---- logger --------------------------------------------------------------------------------------------------
    def log_config(self, config: dict[str, Any]) -> None:
        if self.ctx.is_leader and self.watcher is not None:
            self.watcher.log_config(config)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.ctx.is_leader:
            clean = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}
            self.records.append({"step": int(step), **clean})
            if self.watcher is not None:
                self.watcher.log_metrics(metrics, step)

    def log_run_dir(self, run_dir: Path, artifact: RunArtifact) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass

    # ---- reporter ------------------------------------------------------------------------------------------------
    def flush(self) -> None:
        if self.live:
            self._report({}, None)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self._report(metrics, checkpoint_dir)

    def publish(self, metrics: dict[str, Any], artifact_dir: Path) -> None:
        self._report(metrics, artifact_dir)

    def _report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        import ray.train

        wrote = checkpoint_dir is not None and checkpoint_dir.is_dir() and any(checkpoint_dir.iterdir())
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if wrote else None
        name = checkpoint_dir.name if checkpoint_dir is not None else None
        records, self.records = self.records, []
        ray.train.report({**metrics, LOG_KEY: records}, checkpoint=checkpoint, checkpoint_dir_name=name)
        if checkpoint_dir is not None:
            ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
            self.ctx.barrier()
            shutil.rmtree(checkpoint_dir, ignore_errors=True)


def train_worker(config: dict[str, Any], watcher: MetricLogger | None = None) -> None:
    """The Ray Train worker function: ``run_training`` with Ray's rank, the channel and the restored checkpoint.

    ``config`` (built by the driver): ``config`` (the validated RunConfig), ``data`` (the task data the driver read),
    ``base`` (a staged copy of a local base model, or None), ``run_id``, ``live_logs``, ``resume_from``.
    ``watcher``: see :attr:`RayChannel.watcher` (bind it with ``functools.partial``)."""
    import ray.train
    from ray.train.torch import get_device

    from protpeft.trainer.run import RunInputs, run_training

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # not a line per checkpoint in the user's console
    cfg = config["config"]  # the driver's validated object (pickled), not validated again
    ctx = WorkerContext.from_process_group(get_device())
    restored = ray.train.get_checkpoint()  # after a worker-group restart, or when Ray restored the run
    if is_artifact(restored):
        return  # the run had finished and published its artefact before the restart: nothing left to do
    staged: StagedDir | None = config.get("base")
    inputs = RunInputs(config.get("data"), str(staged.local_copy()) if staged is not None else None)
    channel = RayChannel(ctx, config.get("run_id"), config.get("live_logs", True), watcher)
    scratch = Path(tempfile.mkdtemp(prefix=f"protpeft-{cfg.name}-rank{ctx.rank}-"))
    explicit = config.get("resume_from")  # a checkpoint directory named by --resume
    try:
        with restored.as_directory() if restored is not None else nullcontext(explicit) as resume_from:
            run_training(
                cfg,
                ctx=ctx,
                reporter=channel,
                logger=channel,
                resume_from=Path(resume_from) if resume_from else None,
                checkpoint_root=scratch,
                inputs=inputs,
                artifact_dir=scratch / ARTIFACT_CHECKPOINT,
            )
    except Exception as err:
        _raise_picklable(err)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _raise_picklable(err: Exception) -> None:
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
    except Exception:
        raise WorkerError(f"{type(err).__name__}: {err}") from err
    raise err
