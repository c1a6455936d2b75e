"""``protpeft evaluate``: a saved run's metrics on a split of its own data (or another config's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from protpeft.artifact import ARTIFACT_FILE, read_artifact
from protpeft.config import apply_overrides, config_from_dict, load_config
from protpeft.data.datasets import load_task_data
from protpeft.errors import ConfigError
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
    """Metrics of ``run_dir``'s model on ``split`` of the data of ``config`` (default: the run's own config), with
    ``overrides`` (``--set`` items) applied to whichever config is used."""
    if config is not None:
        cfg = load_config(config, overrides)
    else:
        recorded = read_artifact(run_dir).config
        cfg = config_from_dict(apply_overrides(recorded, overrides), f"{run_dir}/{ARTIFACT_FILE}")
    data = load_task_data(cfg.task, cfg.data)
    if split not in data.splits:
        raise ConfigError(f"--split {split}: no such split; this run's data has {', '.join(sorted(data.splits))}")
    predictor = Predictor.from_run_dir(run_dir, base=base)
    examples = data.splits[split]
    probs = predictor.predict_examples([tuple(data.sequences[m] for m in e.members) for e in examples])
    targets = np.array([e.target for e in examples])
    metrics = task_metrics(predictor.task, probs, targets, predictor.label_names)
    return {
        "run_dir": str(run_dir),
        "split": split,
        "examples": len(examples),
        **{f"{split}_{k}": v for k, v in metrics.items() if "/" not in k},
    }
