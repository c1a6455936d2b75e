"""A worker node lost mid-run: its Ray processes are SIGKILLed as one process group while ``protpeft train`` (2 LoRA
workers on nodeA and nodeB, storage on S3) is training. The node leaves the cluster; a replacement with the same
resources joins; the run continues from its last checkpoint in object storage, finishes at the right step, and
trains at most one checkpoint interval twice (read from the driver's ``metrics.jsonl``, written live on the driver's
side as the workers report)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from drivers import driver_env, work_dir, write_config
from processes import wait_until
from ray_nodes import alive_nodes

pytestmark = pytest.mark.cluster

STEPS, EVERY, KILL_AFTER = 24, 4, 6


def _alive_ids(cluster, name: str) -> set[str]:
    return {n["node_id"] for n in alive_nodes(cluster.dashboard_url, cluster.token) if name in n["resources"]}


def _logged_steps(log: Path) -> list[int]:
    if not log.is_file():
        return []
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [r["step"] for r in lines if "train_loss" in r]


def test_run_survives_losing_a_node_and_resumes_from_object_storage(local_cluster, make_config) -> None:
    work = work_dir(local_cluster, "node-loss")
    cfg = make_config(
        "ppi", "lora", f"optim.max_steps={STEPS}", "optim.epochs=20", f"engine.checkpoint_every={EVERY}",
        f"engine.eval_every={EVERY}", "engine.log_every=1", "optim.batch_size=4", "engine.max_failures=3",
        f"output_dir={work / 'runs'}", name="node-loss", small=True,
    )  # fmt: skip
    config_file = write_config(cfg, work / "node-loss.yaml")
    env = driver_env(local_cluster, work)
    storage = f"s3://{local_cluster.bucket}/node-loss-{uuid.uuid4().hex[:6]}"
    argv = [sys.executable, "-m", "protpeft", "train", str(config_file), "--address", local_cluster.gcs_address,
            "--workers", "2", "--storage", storage]  # fmt: skip
    log = cfg.run_dir / "metrics.jsonl"
    (lost,) = _alive_ids(local_cluster, "nodeB")
    (survivor,) = _alive_ids(local_cluster, "nodeA")
    with open(work / "driver.log", "w") as out:
        driver = subprocess.Popen(argv, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(f"step {KILL_AFTER} to be logged", lambda: max(_logged_steps(log), default=0) >= KILL_AFTER,
                       timeout=300)  # fmt: skip
            assert driver.poll() is None, "the run ended before the node was lost"

            # -- the node is lost: every Ray process of it at once
            started = time.monotonic()
            local_cluster.kill_node("nodeB")
            seen_before = _logged_steps(log)
            wait_until("nodeB to be declared dead", lambda: not _alive_ids(local_cluster, "nodeB"), timeout=90)
            local_cluster.timings["lost node declared dead (s)"] = round(time.monotonic() - started, 1)
            assert not local_cluster.nodes["nodeB"].group.ours()  # nothing of the lost node is left running
            assert _alive_ids(local_cluster, "nodeA") == {survivor}

            # -- capacity returns: a replacement node joins, the run finishes
            local_cluster.start_node("nodeB")
            (replacement,) = _alive_ids(local_cluster, "nodeB")
            assert replacement != lost
            assert driver.wait(timeout=600) == 0, (work / "driver.log").read_text()[-4000:]
        finally:
            if driver.poll() is None:
                driver.kill()

    artifact = json.loads((cfg.run_dir / "protpeft.json").read_text())
    assert artifact["steps"] == STEPS and artifact["workers"] == 2
    steps = _logged_steps(log)
    restart = next((i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]), None)  # the new group's start
    if restart is None:  # the node was lost right after a checkpoint: the new group went on from there
        assert steps == list(range(1, STEPS + 1)), (steps, seen_before)
        return
    last_before, resumed_from = steps[restart - 1], steps[restart] - 1
    assert last_before >= max(seen_before)
    assert resumed_from % EVERY == 0  # from a checkpoint
    assert last_before - resumed_from <= EVERY  # at most one checkpoint interval trained twice
    assert steps[restart:] == list(range(resumed_from + 1, STEPS + 1))
