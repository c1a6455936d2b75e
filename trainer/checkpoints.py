"""Resumable training state, and the local checkpoint keeper (Ray Train's ``CheckpointConfig`` plays this role
under Ray).

A checkpoint directory holds the engine's files (trainable weights, optimizer, scheduler — or DeepSpeed's own),
``train_state.json`` (step, epoch, position in the epoch) and each rank's RNG state, so a resumed run continues
with the same batches and the same random stream.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file

from protpeft.artifact import write_json_atomic
from protpeft.trainer.context import WorkerContext

__all__ = ["LocalReporter", "Reporter", "TrainState", "latest_checkpoint", "load_state", "save_state"]

STATE_FILE = "train_state.json"


@dataclass
class TrainState:
    step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    batch_in_epoch: int = 0
    """Micro-batches of the current epoch already consumed (the data position)."""
    examples_seen: int = 0


class Reporter(Protocol):
    """Where the loop hands what it produced. Every method is called by every worker at the same points."""

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        """At each evaluation; ``checkpoint_dir`` holds this worker's files (or None)."""

    def flush(self) -> None:
        """After each periodic training log: deliver what was logged so far (under Ray, to the driver)."""

    def publish(self, metrics: dict[str, Any], artifact_dir: Path) -> None:
        """Once, after the leader wrote the finished run's artefact to ``artifact_dir`` (under Ray it travels to
        storage, where the driver fetches it; in one process it is already where it belongs)."""


def save_state(directory: Path, state: TrainState, ctx: WorkerContext) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, directory / f"rng-rank{ctx.rank}.safetensors")
    if ctx.is_leader:
        write_json_atomic(directory / STATE_FILE, asdict(state))


def load_state(directory: Path, ctx: WorkerContext) -> TrainState:
    state = TrainState(**json.loads((directory / STATE_FILE).read_text()))
    rng_file = directory / f"rng-rank{ctx.rank}.safetensors"
    if rng_file.exists():
        rng = load_file(rng_file)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return state


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (``step-N`` directories holding a state file)."""
    found = [p for p in Path(root).glob("step-*") if (p / STATE_FILE).is_file()]
    return max(found, key=lambda p: int(p.name.split("-")[1]), default=None)


class LocalReporter:
    """Keeps checkpoints under ``root/step-N``: the latest plus the best ``keep`` by ``metric``."""

    def __init__(self, root: Path, keep: int = 2, metric: str = "val_aupr", mode: str = "max") -> None:
        self.root = Path(root)
        self.keep, self.metric, self.mode = keep, metric, mode
        self.scores: dict[Path, float | None] = {}
        """Each kept checkpoint's metric; None when its evaluation did not report the metric."""
        self.history: list[dict[str, Any]] = []

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.history.append(dict(metrics))
        if checkpoint_dir is None:
            return
        target = self.root / checkpoint_dir.name
        if checkpoint_dir.resolve() != target.resolve():
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(checkpoint_dir), target)
        score = metrics.get(self.metric)
        self.scores[target] = float(score) if score is not None else None
        self._prune(target)

    def flush(self) -> None:
        pass

    def publish(self, metrics: dict[str, Any], artifact_dir: Path) -> None:
        pass

    def _prune(self, latest: Path) -> None:
        sign = 1 if self.mode == "max" else -1

        def rank(path: Path) -> tuple[bool, float]:  # a checkpoint without the metric ranks last in either mode
            score = self.scores[path]
            return (score is not None, sign * score if score is not None else 0.0)

        ranked = sorted(self.scores, key=rank, reverse=True)
        keep = set(ranked[: self.keep]) | {latest}
        for path in list(self.scores):
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)
                del self.scores[path]
