"""What ``protpeft train`` does, apart from parsing and printing: the config from YAML, ``--set`` and the typed
options; a fresh run directory; training in this process (``--local``) or on Ray Train; the MLflow run around it
(:mod:`protpeft.registry.run_lifecycle`); registration of the finished run when the config asks for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from protpeft.config import RunConfig, load_config
from protpeft.trainer.fresh_run import start_afresh

__all__ = ["TrainOutcome", "train_from_cli"]


class TrainOutcome(dict):
    """The run's summary (``run_dir``, ``metrics``, ...); ``registered`` is the new model version, if any."""

    registered: Any = None


def train_from_cli(
    config: Path,
    overrides: list[str] | None = None,
    *,
    address: str | None = None,
    workers: int | None = None,
    cpus_per_worker: float | None = None,
    gpus_per_worker: float | None = None,
    storage: str | None = None,
    local: bool = False,
    resume: Path | None = None,
    register_as: str | None = None,
    alias: str | None = None,
    progress: bool = True,
) -> TrainOutcome:
    """Train ``config`` with the user's ``--set`` ``overrides`` and the command's options (those given win).

    Raises:
        ConfigError: an invalid config. TrainingFailed: the run failed (its MLflow run is left FAILED).
    """
    from protpeft.registry.run_lifecycle import tracked_run

    options = {"engine.workers": workers, "engine.cpus_per_worker": cpus_per_worker,
               "engine.gpus_per_worker": gpus_per_worker, "engine.storage": storage,
               "tracking.register_as": register_as,
               "tracking.alias": alias}  # fmt: skip
    cfg = load_config(config, overrides, {k: v for k, v in options.items() if v is not None})
    if not local:
        from protpeft.trainer.ray_launch import run_storage

        run_storage(cfg).check()  # unusable storage: one line before an MLflow run or a run directory exists
    with tracked_run(cfg) as run:
        if local:
            summary = _train_here(cfg, run.logger(), resume, progress)
        else:
            from protpeft.trainer.ray_launch import launch_training

            with _progress_view(cfg, progress):
                summary = launch_training(cfg, address=address, logger_factory=run.logger_factory, resume=resume)
    if run.run_id is not None:
        summary["mlflow_run_id"] = run.run_id  # printed: the run a registered version of this directory links to
    outcome = TrainOutcome(summary)
    if cfg.tracking.register_as:
        outcome.registered = run.register(summary["run_dir"], cfg.tracking.register_as, cfg.tracking.alias)
    return outcome


def _train_here(cfg: RunConfig, logger: Any, resume: Path | None, progress: bool) -> dict[str, Any]:
    from protpeft.trainer.run import run_training

    if resume is None:
        start_afresh(cfg.run_dir)
    return run_training(cfg, logger=logger, resume_from=resume, progress=progress).summary()


def _progress_view(cfg: RunConfig, enabled: bool):
    """The run's live progress line (step / total, loss, validation metric, ETA) from its ``metrics.jsonl`` while
    Ray trains it."""
    if not enabled:
        from contextlib import nullcontext

        return nullcontext()
    from protpeft.console import console
    from protpeft.progress import follow_run, planned_steps

    total = planned_steps(cfg)
    return follow_run(cfg.run_dir, cfg.name, total=total, metric=cfg.engine.checkpoint_metric, console=console)
