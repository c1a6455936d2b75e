"""``protpeft tune`` on the shared-nothing cluster with storage on S3: 4 LoRA trials, 2 at a time (one 1-worker
trial per worker node), interrupted with Ctrl+C after the first trial finished; the driver's experiment directory is
then removed, and ``tune --resume`` with the same ``--storage`` restores the experiment from S3 alone (Ray Tune's
state, protpeft's search and ledger, the finished trials' artefacts); the best trial is registered as
``NAME@champion``; then, on the driver, ``registry pull`` and ``predict`` by that name.

Trial drivers stay on the driver's node (the head), where the data, the base model and the MLflow store are; the
trials' workers run on the worker nodes, which see none of them: the data travels through Ray, the base model and
every checkpoint and artefact through S3.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest
import yaml
from drivers import driver_env, work_dir

pytestmark = pytest.mark.cluster


def test_tune_on_the_cluster_survives_ctrl_c_and_registers_the_best(local_cluster, tiny_model, small_ppi) -> None:
    work = work_dir(local_cluster, "tune")
    config = {
        "task": "ppi",
        "mode": "lora",
        "model": {"base": str(tiny_model)},
        "data": {"pairs": str(small_ppi["pairs"]), "sequences": str(small_ppi["sequences"])},
        "lora": {"last_layers": 4},
        "optim": {"batch_size": 16, "grad_accum": 1, "epochs": 100, "max_steps": 8, "lr": 5e-3},
        "engine": {"eval_every": 4, "checkpoint_every": 4, "workers": 1},
        "tracking": {"experiment": "cluster-tune"},
    }
    spec = {
        "config": config, "storage": str(work / "experiments"), "name": "search",
        "search": {"algorithm": "grid", "max_concurrent": 2},
        "space": {"optim.lr": {"grid": [1e-3, 3e-3, 1e-2, 3e-2]}},
    }  # fmt: skip
    tune_file = work / "search.yaml"
    tune_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    exp_dir = work / "experiments" / "search"
    env = driver_env(local_cluster, work)
    cluster = ["--address", local_cluster.gcs_address]
    storage = f"s3://{local_cluster.bucket}/tune-{uuid.uuid4().hex[:6]}"

    # -- start, and Ctrl+C once the first trial has finished
    with open(work / "first.log", "w") as log:
        first = subprocess.Popen(
            [sys.executable, "-m", "protpeft", "tune", str(tune_file), *cluster, "--storage", storage],
            cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            ends = exp_dir / "ledger" / "trial_ends.json"
            deadline = time.monotonic() + 600
            while not (ends.is_file() and "complete" in ends.read_text()):
                assert first.poll() is None, (work / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no trial finished in time"
                time.sleep(1)
            first.send_signal(signal.SIGINT)
            assert first.wait(timeout=240) == 130, (work / "first.log").read_text()[-3000:]
        finally:
            if first.poll() is None:
                first.kill()
    before = json.loads((exp_dir / "trials.json").read_text())
    assert before["interrupted"]
    done_before = {t["trial_id"]: t for t in before["trials"] if t["state"] == "FINISHED"}
    assert done_before, [t["state"] for t in before["trials"]]
    assert f"--resume {exp_dir} --storage {storage}" in (work / "first.log").read_text()
    kept = local_cluster.s3.filesystem()
    root = f"{storage.removeprefix('s3://')}/search"
    for name in ("tuner.pkl", "protpeft/search.json", "protpeft/ledger/trial_ends.json", "protpeft/attempts.jsonl"):
        assert kept.get_file_info(f"{root}/{name}").size, name  # the experiment is in S3 ...
    shutil.rmtree(exp_dir)  # ... and only there: the driver's experiment directory is gone

    # -- resume from S3: every trial ends, the finished ones are not run again, the best is registered
    resumed = subprocess.run(
        [sys.executable, "-m", "protpeft", "tune", "--resume", str(exp_dir), *cluster, "--storage", storage,
         "--register-best", "cluster-tuned", "--alias", "champion"],
        cwd=work, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = json.loads((exp_dir / "trials.json").read_text())
    assert [t["state"] for t in after["trials"]] == ["FINISHED"] * 4
    assert all(t["steps"] == 8 for t in after["trials"])
    rows = {t["trial_id"]: t for t in after["trials"]}
    for tid, done in done_before.items():  # kept as they were; their run directories pulled back from S3
        assert rows[tid]["attempts"] == done["attempts"] >= 1, (done, rows[tid])  # no start after the resume
        assert rows[tid]["metrics"] == done["metrics"]
        assert (exp_dir / "trials" / f"trial-{tid}" / "adapter_model.safetensors").is_file()

    # -- on the driver: pull the champion by name and predict with it
    pulled = subprocess.run([sys.executable, "-m", "protpeft", "registry", "pull", "cluster-tuned@champion",
                             "--to", str(work / "champion")], cwd=work, env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    assert (work / "champion" / "protpeft.json").is_file()
    out = work / "predictions.tsv"
    predicted = subprocess.run([sys.executable, "-m", "protpeft", "predict", "cluster-tuned@champion", "--pairs",
                                str(small_ppi["pairs"]), "--sequences", str(small_ppi["sequences"]), "--out",
                                str(out)], cwd=work, env=env, capture_output=True, text=True,
                               timeout=300)  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    pairs = small_ppi["pairs"].read_text().splitlines()
    assert len(out.read_text().splitlines()) == len(pairs)  # a prediction per pair, under a header as theirs
