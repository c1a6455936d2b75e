"""Fault tolerance and resume through Ray Train.

- Full fine-tuning with 2 workers through DeepSpeed ZeRO-2 (grad accumulation 2, clipping), stopped by a crash
  (``max_failures=0``), continues with ``protpeft train --resume RUN`` from its saved step and follows the loss
  curve of an uninterrupted run of the data-parallel twin (1 process, batch 2b) within 1e-4 (measured gap ~1e-5;
  see ``test_ray_train.py`` for the tolerance's reasoning).
- A training worker process SIGKILLed mid-run, with Ray restarting the worker group from the last checkpoint
  (``FailureConfig(max_failures=1)``), is checked in ``test_ray_train.py``'s LoRA twin run (one Ray launch less).

The kill comes from the rank-0 worker itself (:class:`~kill_once.KillOnce` wraps the worker function), at a chosen
step, once per marker file.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from kill_once import KillOnce, ship_by_value
from parity import trained

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _ship_kill_once_by_value() -> None:
    ship_by_value()


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
    resumed = [r["step"] for r in trained(cfg.run_dir)]
    assert resumed == [1, 2, 3, 4]  # steps 1-2 before the crash, then 3-4: continued from the saved step 2
    artifact = check_artifact_files(cfg.run_dir)  # a complete full-mode artefact (backbone/ + head)
    assert artifact.steps == 4 and artifact.strategy == "deepspeed" and artifact.workers == 2

    # -- the same run uninterrupted (one process, batch 2b: the data-parallel twin) ends at the same loss
    reference = run_training(
        make_config(
            "ppi", "full", *common, "optim.batch_size=8", "engine.strategy=local", name="uninterrupted", small=True
        )
    )
    ours, theirs = trained(cfg.run_dir), trained(reference.run_dir)
    assert [r["step"] for r in ours] == [r["step"] for r in theirs]
    gaps = [abs(a["train_loss"] - b["train_loss"]) for a, b in zip(ours, theirs, strict=True)]
    assert max(gaps) < 1e-4, (ours, theirs)
    assert math.isclose(artifact.metrics["val_loss"], reference.metrics["val_loss"], abs_tol=1e-4)
