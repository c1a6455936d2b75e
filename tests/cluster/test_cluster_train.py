"""``protpeft train`` on the shared-nothing cluster: 2 LoRA workers on two worker nodes that cannot read any of the
driver's files (config, data, base model, run directory, MLflow store), storage on the S3 server.

The run must come back as if it ran here: the run directory on the driver's side, its predictions equal to the same
run done in one process (2 workers x batch b vs 1 process x batch 2b: the data-parallel tolerance of
tests/integration/test_ray_train.py), and the driver's own SQLite MLflow store holding the run and its loss curve.
Bad storage settings fail before any worker starts, with one line that says what to pass.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from drivers import driver_env, work_dir, write_config
from parity import COMMON, STEPS, TOLERANCE, train_losses

pytestmark = pytest.mark.cluster
LAST_2 = "lora.last_layers=2"
"""LoRA on the last 2 of the tiny model's 4 layers: layers 0..1 come from the prefix cache, filled on each node."""


def _protpeft(cluster, args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600):
    """``protpeft ARGS`` as a user runs it on the driver machine (in ``cwd``, its MLflow store there)."""
    return subprocess.run(
        [sys.executable, "-m", "protpeft", *args], cwd=cwd, env=driver_env(cluster, cwd, **(env or {})),
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_lora_on_two_nodes_with_s3_storage_comes_back_to_the_driver(local_cluster, make_config) -> None:
    from mlflow.tracking import MlflowClient

    from protpeft.data.datasets import load_task_data
    from protpeft.predict import Predictor
    from protpeft.trainer.run import run_training

    work = work_dir(local_cluster, "lora")
    cfg = make_config("ppi", "lora", *COMMON, LAST_2, "optim.batch_size=4", f"output_dir={work / 'runs'}",
                      "tracking.mlflow=true", name="cluster-lora", small=True)  # fmt: skip
    config_file = write_config(cfg, work / "lora.yaml")
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    storage = f"s3://{local_cluster.bucket}/runs-{uuid.uuid4().hex[:6]}"

    done = _protpeft(
        local_cluster,
        ["train", str(config_file), "--address", local_cluster.gcs_address, "--workers", "2", "--storage", storage],
        cwd=work,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # -- the run directory is here, complete, although no worker could write to this disk
    run_dir = work / "runs" / "cluster-lora"
    assert {"protpeft.json", "head.safetensors", "adapter_model.safetensors", "metrics.jsonl"} <= {
        p.name for p in run_dir.iterdir()
    }
    artifact = json.loads((run_dir / "protpeft.json").read_text())
    assert artifact["workers"] == 2 and artifact["steps"] == STEPS
    # -- the prefix cache (layers 0..1) was on although the nodes share no cache directory: each node filled its own
    # copy, so rank 0 read every sequence's prefix from its node's cache
    cache_note = next(n for n in artifact["data_notes"] if n.startswith("prefix cache"))
    held = re.search(r"prefix cache on: layers 0\.\.1 of 4 .* for (\d+) of (\d+) sequences", cache_note)
    assert held is not None and held[1] == held[2], cache_note

    # -- the same run in one process, batch 2b: same curve, same predictions
    one_process = ("optim.batch_size=8", "engine.strategy=local")
    reference = run_training(make_config("ppi", "lora", *COMMON, LAST_2, *one_process, name="one-process", small=True))
    cluster_curve, local_curve = train_losses(run_dir), train_losses(reference.run_dir)
    assert len(cluster_curve) == len(local_curve) == STEPS
    assert max(abs(a - b) for a, b in zip(cluster_curve, local_curve, strict=True)) < TOLERANCE
    data = load_task_data(cfg.task, cfg.data)
    pairs = [tuple(data.sequences[m] for m in e.members) for e in data.splits["test"][:24]]
    ours = Predictor.from_run_dir(run_dir).predict(pairs=pairs)
    theirs = Predictor.from_run_dir(reference.run_dir).predict(pairs=pairs)
    assert np.abs(ours - theirs).max() < TOLERANCE

    # -- any machine can pull the run from storage (here: into another directory)
    pulled = _protpeft(local_cluster, ["runs", "pull", "cluster-lora", "--storage", storage, "--out", "pulled"], work)
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    for name in ("protpeft.json", "head.safetensors", "adapter_model.safetensors"):
        assert (work / "pulled" / name).read_bytes() == (run_dir / name).read_bytes()

    # -- the driver's MLflow store has the run, its loss curve and the final metrics
    client = MlflowClient(tracking)
    run = client.get_run(artifact["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == list(range(1, STEPS + 1))
    assert "final_val_loss" in run.data.metrics


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "cannot reach the S3 endpoint"),
        ({"AWS_SECRET_ACCESS_KEY": "wrong-secret"}, "refused the credentials"),
        ({}, "does not exist"),
    ],
    ids=["wrong-endpoint", "wrong-key", "missing-bucket"],
)
def test_bad_storage_fails_before_any_worker_starts(local_cluster, make_config, change, expected) -> None:
    work = work_dir(local_cluster, "bad")
    cfg = make_config("ppi", "lora", "optim.max_steps=1", f"output_dir={work / 'runs'}", name="bad", small=True)
    config_file = write_config(cfg, work / "bad.yaml")
    bucket = local_cluster.bucket if change else "no-such-bucket"
    done = _protpeft(
        local_cluster,
        ["train", str(config_file), "--address", local_cluster.gcs_address, "--storage", f"s3://{bucket}/x"],
        cwd=work,
        env=change,
        timeout=120,
    )
    assert done.returncode != 0
    assert expected in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not (work / "runs").exists()  # nothing written


def test_local_storage_on_a_multi_node_cluster_is_refused(local_cluster, make_config) -> None:
    """By `train`, and by `run-many` once for all its jobs before any of them starts."""
    work = work_dir(local_cluster, "local")
    cfg = make_config("ppi", "lora", "optim.max_steps=1", f"output_dir={work / 'runs'}", name="local", small=True)
    config_file = write_config(cfg, work / "local.yaml")
    jobs_file = work / "jobs.yaml"
    jobs_file.write_text(yaml.safe_dump({"output": str(work / "compare"), "jobs": [
        {"name": "one", "config": str(config_file)}, {"name": "two", "config": str(config_file)}]}))  # fmt: skip
    for command in (["train", str(config_file)], ["run-many", str(jobs_file), "--storage", str(work / "store")]):
        done = _protpeft(local_cluster, [*command, "--address", local_cluster.gcs_address], cwd=work, timeout=180)
        assert done.returncode != 0
        assert "is a directory of this machine only" in done.stderr and "--storage s3://" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert not any((work / where).exists() for where in ("compare", "runs/one", "runs/two"))  # no job, no summary


def test_a_job_larger_than_the_cluster_is_refused_before_work(local_cluster, make_config) -> None:
    work = work_dir(local_cluster, "big")
    cfg = make_config("ppi", "lora", "optim.max_steps=1", f"output_dir={work / 'runs'}", name="big", small=True)
    config_file = write_config(cfg, work / "big.yaml")
    storage = f"s3://{local_cluster.bucket}/big-{uuid.uuid4().hex[:6]}"
    done = _protpeft(
        local_cluster,
        ["train", str(config_file), "--address", local_cluster.gcs_address, "--workers", "3", "--storage", storage],
        cwd=work,
        timeout=180,
    )
    assert done.returncode != 0
    assert "asks for 3 workers x 1 CPU = 3 CPU; the cluster has 2 CPU" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
