"""``protpeft submit`` of a training job to the shared-nothing cluster's dashboard, token auth on: the job's
entrypoint runs on the head (its working directory — config, data, base model — shipped by Ray), its 2 workers on
the worker nodes, storage on S3; it ends SUCCEEDED, its run is in the registry, and the user's machine gets the run
back from storage (``runs pull``) and the registry, never from a node's disk.

The job is a frozen-backbone run, so frozen mode's embedding cache is proven on the cluster here: the two workers
split the embedding, and as their nodes share no cache directory each node then embeds the rest of its own copy."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid

import pytest
import yaml
from drivers import driver_env, work_dir

pytestmark = pytest.mark.cluster


def test_submitted_job_lands_in_storage_and_registry(local_cluster, make_config, tiny_model, small_ppi) -> None:
    from mlflow.tracking import MlflowClient

    from protpeft.data.datasets import load_task_data

    work = work_dir(local_cluster, "submit")
    job_dir = work / "job"
    job_dir.mkdir(parents=True)
    shutil.copytree(tiny_model, job_dir / "tiny-esm2")
    for key in ("pairs", "sequences"):
        shutil.copy(small_ppi[key], job_dir / small_ppi[key].name)
    cfg = make_config("ppi", "frozen", "optim.max_steps=2", "optim.batch_size=8", "engine.log_every=1",
                      "tracking.mlflow=true", name="submitted", small=True)  # fmt: skip
    raw = json.loads(json.dumps(cfg.to_dict(), default=str))
    raw["model"].update(base="tiny-esm2", base_named=None)
    raw["data"].update(pairs=small_ppi["pairs"].name, sequences=small_ppi["sequences"].name, cache_dir=None)
    raw["output_dir"] = "runs"
    (job_dir / "train.yaml").write_text(yaml.safe_dump(raw))
    tracking = f"sqlite:///{work / 'mlflow.db'}"  # the lab's registry: reachable from the head and from here
    storage = f"s3://{local_cluster.bucket}/submitted-{uuid.uuid4().hex[:6]}"
    env = driver_env(local_cluster, work)

    def protpeft(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "protpeft", *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip

    done = protpeft(
        "submit", "--address", local_cluster.dashboard_url, "--working-dir", str(job_dir), "--wait",
        *(f"--env={name}" for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                       "AWS_REGION", "MLFLOW_TRACKING_URI")),
        "--", "train", "train.yaml", "--workers", "2", "--storage", storage, "--register-as", "cluster-submitted",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "SUCCEEDED" in done.stderr
    assert local_cluster.token not in done.stdout + done.stderr

    # -- its run is in the registry, linked to the tracked training run with its loss curve
    client = MlflowClient(tracking)
    (version,) = client.search_model_versions("name='cluster-submitted'")
    assert [m.step for m in client.get_metric_history(version.run_id, "train_loss")] == [1, 2]

    # -- and in storage, from where this machine pulls the run directory
    pulled = protpeft("runs", "pull", "submitted", "--storage", storage, "--out", "pulled")
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    artifact = json.loads((work / "pulled" / "protpeft.json").read_text())
    assert artifact["steps"] == 2 and artifact["workers"] == 2 and artifact["mlflow_run_id"] == version.run_id
    # rank 0 embedded its share and then the rest of its node's copy: every sequence (each node's cache is in its
    # own /tmp, and no other cluster test trains a frozen backbone); on a shared disk it would embed only its share
    unique = len(set(load_task_data(cfg.task, cfg.data).sequences.values()))
    assert artifact["embedded_sequences"] == unique, (artifact["embedded_sequences"], unique)
