"""What the cluster tests' driver processes share: a fresh driver-side directory, a config written there as YAML,
and the environment of a user's shell on the driver machine (the cluster's token and S3 variables, the driver's own
SQLite MLflow store in that directory, no inherited RAY_ADDRESS)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import yaml


def work_dir(cluster, prefix: str) -> Path:
    """A new directory on the driver's side that no worker node can read."""
    path = cluster.driver_dir / f"{prefix}-{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True)
    return path


def write_config(cfg, path: Path) -> Path:
    """``cfg`` (a RunConfig) as the YAML file a user would pass to ``protpeft train``."""
    path.write_text(yaml.safe_dump(json.loads(json.dumps(cfg.to_dict(), default=str))))
    return path


def driver_env(cluster, work: Path, **extra: str) -> dict[str, str]:
    """The driver shell's environment: token + AWS variables, MLflow in ``work/mlflow.db``, then ``extra``."""
    env = {**os.environ, **cluster.env(), "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", **extra}
    env.pop("RAY_ADDRESS", None)
    return env
