"""Full fine-tuning with DeepSpeed ZeRO-3 across the two worker nodes (one worker each, each holding a shard of
every parameter and optimizer state), checkpoints to S3, stopped with Ctrl+C mid-run, then ``--resume NAME`` from
the driver: it continues from its last checkpoint in S3 and follows the loss curve of the same run done without
interruption in one process (batch 2b, the data-parallel twin; tolerance as in tests/integration/test_ray_train.py).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from drivers import driver_env, work_dir, write_config

pytestmark = pytest.mark.cluster

STEPS, EVERY = 8, 2
COMMON = (
    f"optim.max_steps={STEPS}",
    "optim.epochs=20",
    f"engine.checkpoint_every={EVERY}",
    f"engine.eval_every={EVERY}",
    "engine.log_every=1",
    "model.head_dropout=0",
    "optim.grad_accum=2",
)


def _records(log: Path) -> list[dict]:
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _curve(log: Path) -> dict[int, float]:
    """Training loss per step; a step trained again after the resume keeps its last value."""
    return {r["step"]: r["train_loss"] for r in _records(log) if "train_loss" in r}


def test_zero3_across_nodes_stops_and_resumes_from_s3(local_cluster, make_config) -> None:
    from protpeft.trainer.run import run_training

    work = work_dir(local_cluster, "zero3")
    cfg = make_config("ppi", "full", *COMMON, "optim.batch_size=4", "engine.zero_stage=3",
                      f"output_dir={work / 'runs'}", name="zero3", small=True)  # fmt: skip
    config_file = write_config(cfg, work / "zero3.yaml")
    env = driver_env(local_cluster, work)
    storage = f"s3://{local_cluster.bucket}/zero3-{uuid.uuid4().hex[:6]}"
    train = [sys.executable, "-m", "protpeft", "train", str(config_file), "--address", local_cluster.gcs_address,
             "--workers", "2", "--storage", storage]  # fmt: skip
    log = cfg.run_dir / "metrics.jsonl"

    # -- stopped with Ctrl+C once a checkpoint is in S3 (its evaluation reached the driver with it)
    with open(work / "first.log", "w") as out:
        first = subprocess.Popen(train, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 600
            while not any("val_loss" in r for r in _records(log)):
                assert first.poll() is None, (work / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint in time"
                time.sleep(0.2)
            first.send_signal(signal.SIGINT)
            assert first.wait(timeout=180) != 0
        finally:
            if first.poll() is None:
                first.kill()
    stopped_at = max(r["step"] for r in _records(log))
    trained_before = len([r for r in _records(log) if "train_loss" in r])
    assert stopped_at < STEPS, "the run ended before it was stopped"
    assert not (cfg.run_dir / "protpeft.json").exists()

    # -- resumed by name from the driver
    resumed = subprocess.run([*train, "--resume", "zero3"], cwd=work, env=env, capture_output=True, text=True,
                             timeout=900)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    artifact = json.loads((cfg.run_dir / "protpeft.json").read_text())
    assert artifact["steps"] == STEPS and artifact["strategy"] == "deepspeed" and artifact["workers"] == 2
    steps = [r["step"] for r in _records(log) if "train_loss" in r]
    first_resumed = steps[trained_before]  # the resumed run's log continues the stopped one's
    assert first_resumed > 1 and (first_resumed - 1) % EVERY == 0  # from a checkpoint, not from scratch
    assert steps[trained_before:] == list(range(first_resumed, STEPS + 1))

    # -- the same run uninterrupted, in one process with batch 2b: the same curve
    reference = run_training(make_config("ppi", "full", *COMMON, "optim.batch_size=8", "engine.strategy=local",
                                         name="zero3-reference", small=True))  # fmt: skip
    ours, theirs = _curve(log), _curve(reference.run_dir / "metrics.jsonl")
    assert sorted(ours) == sorted(theirs) == list(range(1, STEPS + 1))
    assert max(abs(ours[s] - theirs[s]) for s in ours) < 1e-4, (ours, theirs)
