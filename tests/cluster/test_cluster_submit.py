"""``protpeft submit`` of a training job to the shared-nothing cluster's dashboard, token auth on: the job's
entrypoint runs on the head (its working directory — config, data, base model — shipped by Ray), its 2 workers on
the worker nodes, storage on S3; it ends SUCCEEDED, its run is in the registry, and the user's machine gets the run
back from storage (``runs pull``) and the registry, never from a node's disk.

From the user's terminal the job is then followed with ``protpeft jobs`` (status, logs, ``--follow``, list, stop):
the token is required and never printed. The run names its base model as the user did; once Ray's copy of the
working directory is gone, ``predict`` on the driver finds the base from the directory that was shipped and
otherwise says how to pass ``--base``. (These checks once had a token-auth ``ray start --head`` of their own in
tests/integration; on this cluster, token auth on too, they cost no extra Ray start or training run.)

The job is a frozen-backbone run, so frozen mode's embedding cache is proven on the cluster here: the two workers
split the embedding, and as their nodes share no cache directory each node then embeds the rest of its own copy."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

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

    def protpeft(*args: str, timeout: float = 600, cwd: Path = work, environ: dict | None = None):
        return subprocess.run([sys.executable, "-m", "protpeft", *args], cwd=cwd, env=environ or env,
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip

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

    # -- from the user's terminal: without the token a clear one-line error; with it the job's status and logs
    address, job_id = local_cluster.dashboard_url, done.stdout.split("submitted", 1)[1].split()[0]
    no_token = {name: value for name, value in env.items() if not name.startswith("RAY_AUTH")}
    denied = protpeft("jobs", "list", "--address", address, environ={**no_token, "HOME": str(work)})  # no ~/.ray
    assert denied.returncode == 2, denied.stdout + denied.stderr
    assert "requires token authentication" in denied.stderr and "Traceback" not in denied.stderr
    status = protpeft("jobs", "status", job_id, "--address", address)
    logs = protpeft("jobs", "logs", job_id, "--address", address)
    assert status.stdout.strip() == "SUCCEEDED" and '"steps": 2' in logs.stdout, logs.stdout[-3000:]
    followed = protpeft("jobs", "logs", job_id, "--follow", "--address", address)
    assert followed.returncode == 0 and '"steps": 2' in followed.stdout  # the log stream ends with the job
    listed = protpeft("jobs", "list", "--address", address, environ={**env, "COLUMNS": "250"})
    assert job_id in listed.stdout and "SUCCEEDED" in listed.stdout
    stopped = protpeft("jobs", "stop", job_id, "--address", address)
    assert stopped.returncode == 0 and "already ended" in stopped.stdout
    for result in (done, denied, status, logs, followed, listed, stopped):  # the token never reaches the terminal
        assert local_cluster.token not in result.stdout + result.stderr

    # -- the run names its base as the user did; once Ray's copy of the working dir is gone, predicting on the
    # driver finds it from the directory that was shipped, and says how to pass --base from anywhere else
    assert artifact["base_named"] == "tiny-esm2" and "_ray_pkg_" in artifact["base_model"]
    shutil.rmtree(Path(artifact["base_model"]).parent, ignore_errors=True)  # Ray's copy, on the head's disk
    assert not Path(artifact["base_model"]).exists()
    predict = ("predict", str(work / "pulled"), "--pairs", str(small_ppi["pairs"]), "--sequences",
               str(small_ppi["sequences"]))  # fmt: skip
    found = protpeft(*predict, "--out", str(work / "found.tsv"), cwd=job_dir)
    assert found.returncode == 0, found.stderr[-2000:]
    elsewhere = protpeft(*predict, "--out", str(work / "lost.tsv"))
    assert elsewhere.returncode == 2 and not (work / "lost.tsv").exists()
    error = elsewhere.stderr.strip()
    assert "base model 'tiny-esm2' not found" in error and "--base" in error and "Traceback" not in error
    given = protpeft(*predict, "--out", str(work / "given.tsv"), "--base", str(job_dir / "tiny-esm2"))
    assert given.returncode == 0, given.stderr[-2000:]
    assert (work / "given.tsv").read_text() == (work / "found.tsv").read_text()
    assert len((work / "found.tsv").read_text().splitlines()) > 100
