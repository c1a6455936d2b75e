"""Fault tolerance and resume through Ray Train.

- A training worker process is SIGKILLed mid-run: Ray restarts the worker group from the last registered
  checkpoint (``FailureConfig(max_failures=1)``), the run ends at the right step, and at most one checkpoint
  interval of steps is trained twice.
- Full fine-tuning with 2 workers through DeepSpeed ZeRO-2 (grad accumulation 2, clipping), stopped by a crash
  (``max_failures=0``), continues with ``protpeft train --resume RUN`` from its saved step and follows the loss
  curve of an uninterrupted run of the data-parallel twin (1 process, batch 2b) within 1e-4 (measured gap ~1e-5;
  see ``test_ray_train.py`` for the tolerance's reasoning).

The kill comes from the rank-0 worker itself (:class:`KillOnce` wraps the worker function), at a chosen step, once
per marker file.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration


class KillOnce:
    """A worker function: :func:`~protpeft.trainer.ray_worker.train_worker` whose rank-0 worker records each
    training step it logs as ``pid step`` and SIGKILLs its own process the first time it logs step ``at`` (once
    per marker file). It travels to the workers by value (this module is not importable there)."""

    def __init__(self, at: int, marker: Path, trail: Path) -> None:
        self.at, self.marker, self.trail = at, Path(marker), Path(trail)

    def __call__(self, config: dict) -> None:
        from protpeft.trainer import ray_worker

        ray_worker.train_worker(config, watcher=self)

    def log_config(self, config: dict) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if "train_loss" in metrics:
            self.saw(step)

    def saw(self, step: int) -> None:
        with self.trail.open("a") as fh:
            fh.write(f"{os.getpid()} {step}\n")
        if step == self.at and not self.marker.exists():
            self.marker.write_text(str(step))
            os.kill(os.getpid(), signal.SIGKILL)

    def segments(self) -> list[list[int]]:
        """The steps each worker process trained, in order of process start."""
        by_pid: dict[str, list[int]] = {}
        for line in self.trail.read_text().splitlines():
            pid, step = line.split()
            by_pid.setdefault(pid, []).append(int(step))
        return list(by_pid.values())


@pytest.fixture(autouse=True)
def _ship_this_module_by_value() -> None:
    """Ray workers cannot import test modules; KillOnce travels by value."""
    from ray import cloudpickle  # Ray's own copy decides how functions and classes travel

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def train_losses(run_dir: str | Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]


def test_killed_worker_restarts_from_last_checkpoint(ray_local, make_config, tmp_path: Path) -> None:
    from protpeft.trainer.ray_launch import launch_training

    steps, every, kill_at = 6, 2, 5
    cfg = make_config(
        "ppi",
        "lora",
        f"optim.max_steps={steps}",
        f"engine.checkpoint_every={every}",
        f"engine.eval_every={every}",
        "engine.log_every=1",
        "optim.batch_size=4",
        "engine.workers=2",
        "engine.max_failures=1",
        name="fault",
        small=True,
    )
    killer = KillOnce(kill_at, tmp_path / "killed", tmp_path / "trail")
    summary = launch_training(cfg, worker=killer)

    assert (tmp_path / "killed").read_text() == str(kill_at)  # the kill happened
    before, after = killer.segments()  # two worker groups: the killed one and its replacement
    assert before == list(range(1, kill_at + 1))
    resumed_from = after[0] - 1
    assert resumed_from % every == 0 and resumed_from < kill_at  # restarted from a checkpoint
    assert kill_at - resumed_from <= every  # at most one checkpoint interval trained twice
    assert after == list(range(resumed_from + 1, steps + 1))
    assert summary["steps"] == steps
    assert Path(summary["checkpoint"]).name == "artifact"  # the last checkpoint: the published artefact
    # the run directory's log continues across the restart without gaps
    assert [s for s, _ in train_losses(summary["run_dir"])] == [
        *range(1, kill_at),
        *range(resumed_from + 1, steps + 1),
    ]


def test_full_zero2_resumes_after_crash_and_matches_uninterrupted_run(
    ray_local, one_thread, make_config, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from protpeft.artifact import check_artifact_files
    from protpeft.cli import app
    from protpeft.trainer.ray_launch import TrainingFailed, launch_training
    from protpeft.trainer.run import run_training

    common = (
        "optim.max_steps=4",
        "engine.checkpoint_every=2",
        "engine.eval_every=2",
        "engine.log_every=1",
        "model.head_dropout=0",
        "optim.grad_accum=2",
    )
    cfg = make_config("ppi", "full", *common, "optim.batch_size=4", "engine.workers=2", name="resume", small=True)
    killer = KillOnce(3, tmp_path / "killed", tmp_path / "trail")
    with pytest.raises(TrainingFailed, match="failed"):
        launch_training(cfg, worker=killer)  # max_failures=0: the crash stops the run after step 2's save
    assert not (cfg.run_dir / "protpeft.json").exists()
    assert cfg.engine.zero_stage == 2 and cfg.engine.strategy == "auto"  # auto: full mode -> DeepSpeed ZeRO-2

    # -- protpeft train CONFIG --resume RUN_DIR, as a user would
    config_file = tmp_path / "resume.yaml"
    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    result = CliRunner().invoke(app, ["train", str(config_file), "--resume", str(cfg.run_dir)])
    assert result.exit_code == 0, result.output
    resumed = [s for s, _ in train_losses(cfg.run_dir)]
    assert resumed == [1, 2, 3, 4]  # steps 1-2 before the crash, then 3-4: continued from the saved step 2
    artifact = check_artifact_files(cfg.run_dir)  # a complete full-mode artefact (backbone/ + head)
    assert artifact.steps == 4 and artifact.strategy == "deepspeed" and artifact.workers == 2

    # -- the same run uninterrupted (one process, batch 2b: the data-parallel twin) ends at the same loss
    reference = run_training(
        make_config(
            "ppi", "full", *common, "optim.batch_size=8", "engine.strategy=local", name="uninterrupted", small=True
        )
    )
    ours, theirs = train_losses(cfg.run_dir), train_losses(reference.run_dir)
    assert [s for s, _ in ours] == [s for s, _ in theirs]
    assert max(abs(a - b) for (_, a), (_, b) in zip(ours, theirs, strict=True)) < 1e-4, (ours, theirs)
    assert math.isclose(artifact.metrics["val_loss"], reference.metrics["val_loss"], abs_tol=1e-4)
