"""``run-many --storage``: every job's ``engine.storage``, each distinct location checked once on the launching side,
and a bad location refused in one line before Ray starts, any MLflow run exists or any job is written. (Jobs training
on a storage: tests/integration/test_run_many.py; refused on a multi-node cluster: tests/cluster.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from protpeft.trainer.ray_cluster import free_port
from protpeft.trainer.run_many import checked_storages, load_jobs
from protpeft.trainer.storage import StorageError

pytestmark = pytest.mark.unit


def _spec(tiny_model: Path, small_ppi: dict, tmp_path: Path, *jobs: dict) -> dict:
    common = [
        f"model.base={tiny_model}",
        f"data.pairs={small_ppi['pairs']}",
        f"data.sequences={small_ppi['sequences']}",
        f"output_dir={tmp_path / 'runs'}",
        "optim.max_steps=1",
    ]
    return {"output": str(tmp_path / "compare"), "set": common, "jobs": list(jobs)}


def test_storage_option_reaches_every_job_and_wins(tiny_model: Path, small_ppi: dict, tmp_path: Path) -> None:
    spec = _spec(tiny_model, small_ppi, tmp_path, {"name": "a"}, {"name": "b", "set": ["engine.storage=elsewhere"]})
    jobs, _ = load_jobs(spec, {"engine.storage": "s3://bucket/prefix"})
    assert [job.cfg.engine.storage for job in jobs] == ["s3://bucket/prefix"] * 2
    jobs, _ = load_jobs(spec)  # without the option each job keeps its own
    assert [job.cfg.engine.storage for job in jobs] == [None, "elsewhere"]


def test_each_distinct_storage_is_parsed_once_and_checked(make_config, tmp_path: Path) -> None:
    shared, own = tmp_path / "shared-store", tmp_path / "own-store"
    cfgs = [make_config("ppi", "lora", f"engine.storage={where}", name=f"j{i}", small=True)
            for i, where in enumerate((shared, own, shared))]  # fmt: skip
    storages = checked_storages(cfgs)
    assert [s.uri for s in storages] == [str(shared), str(own), str(shared)]
    assert storages[0] is storages[2]  # one object per location: checked once, shipped once
    assert shared.is_dir() and own.is_dir()  # the check made them, writable
    (tmp_path / "file").write_text("x")
    bad = make_config("ppi", "lora", f"engine.storage={tmp_path / 'file' / 'store'}", name="bad", small=True)
    with pytest.raises(StorageError, match="is not a writable directory"):
        checked_storages([cfgs[0], bad])


def test_unreachable_s3_storage_is_one_line_and_starts_no_job(tiny_model: Path, small_ppi: dict, tmp_path: Path):
    """As `train` (tests/unit/test_storage.py, tests/cluster/test_cluster_train.py): refused before Ray is joined
    (the address below has no cluster), before any MLflow store, run directory or summary exists."""
    jobs_file = tmp_path / "jobs.yaml"
    jobs_file.write_text(yaml.safe_dump(_spec(tiny_model, small_ppi, tmp_path, {"name": "a"}, {"name": "b"})))
    port = free_port()  # nobody listens there
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "key",
           "AWS_SECRET_ACCESS_KEY": "secret"}  # fmt: skip
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "PROTPEFT_HOME", "AWS_ENDPOINT_URL_S3"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-m", "protpeft", "run-many", str(jobs_file), "--storage", "s3://bucket/runs",
         "--address", "127.0.0.1:1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"cannot reach the S3 endpoint http://127.0.0.1:{port}" in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.yaml"]  # no mlflow.db, runs/, compare/
