"""``protpeft evaluate``: a saved run's metrics on a split of its own data (or another config's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from protpeft.artifact import read_artifact_meta
from protpeft.config import config_from_dict, load_config
from protpeft.data.datasets import load_task_data
from protpeft.metrics import task_metrics
from protpeft.predict import Predictor

__all__ = ["evaluate_run"]


def evaluate_run(
    run_dir: Path,
    config: Path | None = None,
    overrides: list[str] | None = None,
    split: str = "test",
    base: str | None = None,
) -> dict[str, Any]:
    meta = read_artifact_meta(run_dir)
    cfg = load_config(config, overrides) if config else config_from_dict(meta["config"], f"{run_dir}/protpeft.json")
    data = load_task_data(cfg.task, cfg.data)
    if split not in data.splits:
        raise ValueError(f"unknown split {split!r}")
    predictor = Predictor.from_run_dir(run_dir, base=base)
    examples = data.splits[split]
    members = [tuple(data.sequences[m] for m in e.members) for e in examples]
    if predictor.task == "ppi":
        probs = predictor.predict(pairs=members).reshape(-1, 1)
    else:
        probs = predictor.predict(sequences=[m[0] for m in members])
    targets = np.array([e.target for e in examples])
    metrics = task_metrics(predictor.task, probs, targets, predictor.label_names)
    return {
        "run_dir": str(run_dir),
        "split": split,
        "examples": len(examples),
        **{f"{split}_{k}": v for k, v in metrics.items() if "/" not in k},
    }
