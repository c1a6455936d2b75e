"""Helpers of the registry tests (plain functions; the fixtures are in ``registry_fixtures``)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

AMINO = "ACDEFGHIKLMNPQRSTVWY"


def sample_pairs(n: int = 6, seed: int = 7) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [tuple("".join(rng.choice(AMINO) for _ in range(rng.randint(12, 40))) for _ in range(2)) for _ in range(n)]


def sample_sequences(n: int = 5, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(AMINO) for _ in range(rng.randint(12, 40))) for _ in range(n)]


def tiny_config(tiny_model: Path, data: dict[str, Path], task: str, mode: str, out: Path, *overrides: str):
    """A few-step run of the tiny backbone on synthetic data (tracking off unless overridden)."""
    from protpeft.config import load_config

    inputs = (
        [f"data.pairs={data['pairs']}", f"data.sequences={data['sequences']}"]
        if task == "ppi"
        else [f"data.table={data['table']}"]
    )
    base = [f"task={task}", f"mode={mode}", f"name={task}-{mode}", f"output_dir={out}", f"model.base={tiny_model}",
            "optim.batch_size=16", "optim.grad_accum=1", "optim.max_steps=3", "lora.last_layers=4",
            "tracking.mlflow=false", "optim.lr=5e-3"]  # fmt: skip
    return load_config(None, base + inputs + list(overrides))


@dataclass
class TrainedRun:
    run_dir: Path
    meta: dict[str, Any]
    predictions: np.ndarray
    """The trained in-memory model's probabilities on :func:`sample_pairs` / :func:`sample_sequences`."""


def original_predictions(result, meta: dict[str, Any]) -> np.ndarray:
    """Probabilities of the model a run trained, straight from memory (not from its saved files)."""
    from protpeft.data.tokens import TokenEncoder
    from protpeft.models.backbone import load_tokenizer
    from protpeft.predict import Predictor

    predictor = Predictor(result.model, TokenEncoder(load_tokenizer(meta["base_model"]), int(meta["crop"])), meta)
    if meta["task"] == "ppi":
        return predictor.predict(pairs=sample_pairs())
    return predictor.predict(sequences=sample_sequences())


def train(cfg, logger=None) -> TrainedRun:
    from protpeft.trainer.run import run_training

    result = run_training(cfg, logger=logger)
    meta = json.loads((result.run_dir / "protpeft.json").read_text())
    return TrainedRun(result.run_dir, meta, original_predictions(result, meta))


def use_sqlite_store(store_template: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point protpeft at a fresh embedded store in ``home`` (a copy of the migrated template)."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(store_template, home / "mlflow.db")
    monkeypatch.setenv("PROTPEFT_HOME", str(home))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # no usage reports from tests (and no network here)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return f"sqlite:///{home / 'mlflow.db'}"


# --------------------------------------------------------------------------------------------------------------
# processes


def run_python(code: str, timeout: float = 180) -> str:
    """Run ``code`` in a fresh interpreter with this environment; return its stdout (fail with its stderr)."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert proc.returncode == 0, f"subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc.stdout


def last_json_line(stdout: str) -> Any:
    return json.loads([line for line in stdout.splitlines() if line.strip()][-1])


def wait_http(
    url: str, process: subprocess.Popen, timeout: float = 120, headers: dict[str, str] | None = None
) -> None:
    """Until ``url`` answers 200 (``headers`` sent with each try); fails when ``process`` exits first."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers=headers or {})
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"process serving {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{url} not ready after {timeout} s")
