"""The data-parallel twin: 2 workers x batch b must follow the same loss curve as 1 process x batch 2b (shared by
the Ray Train tests on one machine and on the shared-nothing cluster).

Tolerance: the two runs see the same global batches and start from the same weights; only the order of float32
reductions differs (two half-batch means averaged by all-reduce vs one full-batch mean). Over 3 optimizer steps of
AdamW with 2 micro-batches each the measured gap was 3e-8 (DDP: lora, frozen) and 7e-6 (DeepSpeed ZeRO-2: full); we
allow 1e-4 absolute, well below the loss change per step (~1e-2): workers reading the wrong shard, a missing
gradient all-reduce or a misplaced accumulation boundary moves the curve by far more.
"""

from __future__ import annotations

import json
from pathlib import Path

STEPS = 3
TOLERANCE = 1e-4
COMMON = (
    f"optim.max_steps={STEPS}",
    "optim.grad_accum=2",
    "engine.log_every=1",
    "model.head_dropout=0",
    "lora.dropout=0",
    "optim.lr=3e-3",
)
"""Overrides of both twins (the 2-worker run adds optim.batch_size=4, the one-process run optim.batch_size=8)."""


def logged(run_dir: str | Path) -> list[dict]:
    """Every record of the run's ``metrics.jsonl``, in order; [] before it exists (tests read it live, while a
    driver writes it)."""
    log = Path(run_dir) / "metrics.jsonl"
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def trained(run_dir: str | Path) -> list[dict]:
    """The training records (``step``, ``train_loss``, ...), in order: a worker group restarted from a checkpoint
    logs the steps it repeats again."""
    return [r for r in logged(run_dir) if "train_loss" in r]


def train_losses(run_dir: str | Path) -> list[float]:
    """The run's training loss per logged step."""
    return [r["train_loss"] for r in trained(run_dir)]
