"""Full fine-tuning with DeepSpeed ZeRO-3 across the two worker nodes (one worker each, each holding a shard of every
parameter and optimizer state), storage on S3, through both interruptions a cluster run meets, in one run (each run
costs ~30 CPU-seconds of Ray start-up, and the cluster tests share the CI's 2 cores with the rest of the suite):

1. **Node loss.** nodeB's Ray processes are SIGKILLed as one process group mid-run. The node leaves the cluster; a
   replacement with the same resources joins; Ray Train restarts the worker group (``engine.max_failures``) from the
   last checkpoint in S3, finishing what it started and repeating at most one checkpoint interval (read from the
   driver's ``metrics.jsonl``, written live on the driver's side as the workers report).
2. **Ctrl+C.** Once the new worker group has checkpointed to S3, the driver is stopped; ``--resume NAME`` from the
   driver continues from its last checkpoint in S3 and finishes at the right step.

The whole curve, both restarts included, follows the same run done without interruption in one process (batch 2b,
the data-parallel twin; tolerance as in tests/parity.py): neither restart loses or repeats any optimizer state.
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
from parity import logged, trained
from processes import wait_until
from ray_nodes import alive_nodes

pytestmark = pytest.mark.cluster

STEPS, EVERY, KILL_AFTER = 12, 2, 3
COMMON = (
    f"optim.max_steps={STEPS}",
    "optim.epochs=20",
    f"engine.checkpoint_every={EVERY}",
    f"engine.eval_every={EVERY}",
    "engine.log_every=1",
    "model.head_dropout=0",
    "optim.grad_accum=2",
)


def _steps(run_dir: Path) -> list[int]:
    """The training steps logged, in order (a restarted group logs its repeated steps again)."""
    return [r["step"] for r in trained(run_dir)]


def _curve(run_dir: Path) -> dict[int, float]:
    """Training loss per step; a step trained again after a restart keeps its last value."""
    return {r["step"]: r["train_loss"] for r in trained(run_dir)}


def _alive_ids(cluster, name: str) -> set[str]:
    return {n["node_id"] for n in alive_nodes(cluster.dashboard_url, cluster.token) if name in n["resources"]}


def _assert_continues_from_a_checkpoint(steps: list[int], seen: int) -> None:
    """``steps`` (one driver's log) is one run restarted at most once from a checkpoint, after step ``seen``."""
    restart = next((i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]), None)  # the new group's start
    if restart is None:  # the node was lost right after a checkpoint: the new group went on from there
        assert steps == list(range(1, len(steps) + 1)), steps
        return
    last_before, resumed_from = steps[restart - 1], steps[restart] - 1
    assert steps[:restart] == list(range(1, last_before + 1)) and last_before >= seen, (steps, seen)
    assert resumed_from % EVERY == 0  # from a checkpoint
    assert last_before - resumed_from <= EVERY  # at most one checkpoint interval trained twice
    assert steps[restart:] == list(range(resumed_from + 1, steps[-1] + 1)), steps


def test_zero3_across_nodes_survives_a_lost_node_and_a_ctrl_c_and_resumes_from_s3(local_cluster, make_config) -> None:
    from protpeft.trainer.run import run_training

    work = work_dir(local_cluster, "zero3")
    cfg = make_config("ppi", "full", *COMMON, "optim.batch_size=4", "engine.zero_stage=3", "engine.max_failures=3",
                      f"output_dir={work / 'runs'}", name="zero3", small=True)  # fmt: skip
    config_file = write_config(cfg, work / "zero3.yaml")
    env = driver_env(local_cluster, work)
    storage = f"s3://{local_cluster.bucket}/zero3-{uuid.uuid4().hex[:6]}"
    train = [sys.executable, "-m", "protpeft", "train", str(config_file), "--address", local_cluster.gcs_address,
             "--workers", "2", "--storage", storage]  # fmt: skip
    log = cfg.run_dir  # what _steps and logged read: its metrics.jsonl, written live by the driver
    (lost,) = _alive_ids(local_cluster, "nodeB")
    (survivor,) = _alive_ids(local_cluster, "nodeA")

    with open(work / "first.log", "w") as out:
        first = subprocess.Popen(train, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(f"step {KILL_AFTER} to be logged", lambda: max(_steps(log), default=0) >= KILL_AFTER,
                       timeout=600)  # fmt: skip
            assert first.poll() is None, (work / "first.log").read_text()[-3000:]

            # -- the node is lost: every Ray process of it at once
            started = time.monotonic()
            local_cluster.kill_node("nodeB")
            seen = max(_steps(log))
            wait_until("nodeB to be declared dead", lambda: not _alive_ids(local_cluster, "nodeB"), timeout=90)
            local_cluster.timings["lost node declared dead (s)"] = round(time.monotonic() - started, 1)
            assert not local_cluster.nodes["nodeB"].group.ours()  # nothing of the lost node is left running
            assert _alive_ids(local_cluster, "nodeA") == {survivor}

            # -- capacity returns: a replacement node joins, the run goes on from its last checkpoint in S3
            local_cluster.start_node("nodeB")
            (replacement,) = _alive_ids(local_cluster, "nodeB")
            assert replacement != lost

            # -- Ctrl+C once the new group has checkpointed (the old one cannot get past step seen + 1)
            def new_group_checkpointed() -> bool:
                assert first.poll() is None, (work / "first.log").read_text()[-3000:]
                return any("val_loss" in r and r["step"] > seen + 1 for r in logged(log))

            wait_until("a checkpoint of the new worker group", new_group_checkpointed, timeout=600)
            first.send_signal(signal.SIGINT)
            assert first.wait(timeout=180) != 0
        finally:
            if first.poll() is None:
                first.kill()
    stopped = _steps(log)
    assert max(stopped) < STEPS, "the run ended before it was stopped"
    assert not (cfg.run_dir / "protpeft.json").exists()
    _assert_continues_from_a_checkpoint(stopped, seen)

    # -- resumed by name from the driver
    resumed = subprocess.run([*train, "--resume", "zero3"], cwd=work, env=env, capture_output=True, text=True,
                             timeout=900)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    artifact = json.loads((cfg.run_dir / "protpeft.json").read_text())
    assert artifact["steps"] == STEPS and artifact["strategy"] == "deepspeed" and artifact["workers"] == 2
    after = _steps(log)[len(stopped) :]  # the resumed run's log continues the stopped one's
    assert after[0] > 1 and (after[0] - 1) % EVERY == 0  # from a checkpoint, not from scratch
    assert after == list(range(after[0], STEPS + 1))

    # -- the same run uninterrupted, in one process with batch 2b: the same curve
    reference = run_training(make_config("ppi", "full", *COMMON, "optim.batch_size=8", "engine.strategy=local",
                                         name="zero3-reference", small=True))  # fmt: skip
    ours, theirs = _curve(log), _curve(reference.run_dir)
    assert sorted(ours) == sorted(theirs) == list(range(1, STEPS + 1))
    assert max(abs(ours[s] - theirs[s]) for s in ours) < 1e-4, (ours, theirs)
