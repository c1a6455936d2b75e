"""The one training loop: every task, every mode, every engine.

Modes change what is trainable (``protpeft.models.modes``) and engines change how the model is wrapped and stepped
(``protpeft.trainer.engines``); tasks change the collate function and the metric function. None of them branch
here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from protpeft.data.batching import epoch_batches, shard_batch
from protpeft.data.datasets import Example
from protpeft.metrics import task_metrics
from protpeft.tracking import MetricLogger
from protpeft.trainer.checkpoints import Reporter, TrainState, save_state
from protpeft.trainer.context import WorkerContext
from protpeft.trainer.engines import Engine

__all__ = ["LoopPlan", "LoopData", "evaluate", "fit", "plan_steps", "train_on_batch"]


@dataclass
class LoopData:
    """What the loop reads: examples per split, how to turn examples into a batch, and the train lengths."""

    splits: dict[str, list[Example]]
    collate: Callable[[Sequence[Example]], dict[str, Any]]
    train_lengths: list[int]
    eval_lengths: dict[str, list[int]]
    task: str
    label_names: tuple[str, ...]


@dataclass(frozen=True)
class LoopPlan:
    """Step arithmetic, fixed at the start so every worker and every resume agree."""

    per_worker_batch: int
    world_size: int
    grad_accum: int
    steps_per_epoch: int
    total_steps: int
    eval_every: int
    checkpoint_every: int
    log_every: int
    eval_batch: int
    seed: int
    bucket: bool
    megabatch: int

    @property
    def global_batch(self) -> int:
        return self.per_worker_batch * self.world_size


def plan_steps(cfg, n_train: int, world_size: int) -> LoopPlan:
    """Optimizer steps per epoch and in total; a training set smaller than one step is a clear error."""
    from protpeft.errors import ConfigError

    optim, engine = cfg.optim, cfg.engine
    per_step = optim.batch_size * world_size * optim.grad_accum
    steps_per_epoch = (n_train // (optim.batch_size * world_size)) // optim.grad_accum
    if steps_per_epoch == 0:
        raise ConfigError(
            f"the training split has {n_train} examples, fewer than one optimizer step needs "
            f"(batch_size {optim.batch_size} x workers {world_size} x grad_accum {optim.grad_accum} = {per_step})"
        )
    total = steps_per_epoch * optim.epochs
    if optim.max_steps is not None:
        total = min(total, optim.max_steps)
    eval_every = engine.eval_every or steps_per_epoch
    return LoopPlan(
        per_worker_batch=optim.batch_size,
        world_size=world_size,
        grad_accum=optim.grad_accum,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        eval_every=eval_every,
        checkpoint_every=engine.checkpoint_every or eval_every,
        log_every=engine.log_every,
        eval_batch=optim.eval_batch_size or 4 * optim.batch_size,
        seed=optim.seed,
        bucket=cfg.data.bucket_by_length,
        megabatch=cfg.data.bucket_megabatch,
    )


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        "inputs": {k: v.to(device, non_blocking=True) for k, v in batch["inputs"].items()},
        "labels": batch["labels"].to(device, non_blocking=True),
    }


def _loss(engine: Engine, batch: dict[str, Any]) -> torch.Tensor:
    with engine.autocast():
        logits = engine.model(**batch["inputs"])
    return F.binary_cross_entropy_with_logits(logits.float(), batch["labels"])


def train_on_batch(engine: Engine, collated: dict[str, Any], device: torch.device, boundary: bool) -> torch.Tensor:
    """Forward and backward of one collated micro-batch; its loss, detached and still on ``device``. Nothing is
    read back from the device here: on an accelerator the host can queue the next batch while this one computes
    (the loop reads the losses once per logging window)."""
    loss = _loss(engine, _to_device(collated, device))
    engine.backward(loss, boundary=boundary)
    return loss.detach()


@torch.no_grad()
def evaluate(engine: Engine, data: LoopData, split: str, plan: LoopPlan, ctx: WorkerContext) -> dict[str, float]:
    """Metrics of ``split`` over all workers, prefixed ``<split>_``. Every worker runs the same number of forward
    passes (ZeRO-3 gathers parameters collectively), padding its last share with a repeated example it ignores."""
    examples = data.splits[split]
    engine.model.eval()
    batches = epoch_batches(
        data.eval_lengths[split],
        plan.eval_batch * ctx.world_size,
        seed=0,
        epoch=0,
        shuffle=False,
        bucket=True,
        megabatch=10**9,
        drop_last=False,
    )
    mine_idx: list[int] = []
    mine_probs: list[torch.Tensor] = []  # on the device until the end: one read back, not one per batch
    mine_losses: list[torch.Tensor] = []
    for global_batch in batches:
        idx = shard_batch(global_batch, ctx.rank, ctx.world_size)
        batch = _to_device(data.collate([examples[i] for i in (idx or global_batch[:1])]), ctx.device)
        with engine.autocast():
            logits = engine.model(**batch["inputs"]).float()
        if not idx:
            continue
        mine_losses.append(F.binary_cross_entropy_with_logits(logits, batch["labels"], reduction="sum"))
        mine_idx.extend(idx)
        mine_probs.append(torch.sigmoid(logits))
    engine.model.train()
    mine = torch.cat(mine_probs).cpu().numpy() if mine_probs else None
    loss_sum = float(torch.stack(mine_losses).double().sum()) if mine_losses else 0.0
    gathered = ctx.all_gather_object((mine_idx, mine, loss_sum))
    probs = np.zeros((len(examples), len(data.label_names)), dtype=np.float64)
    for idx, part, _ in gathered:
        if part is not None:
            probs[idx] = part
    targets = np.array([e.target for e in examples])
    metrics = task_metrics(data.task, probs, targets, data.label_names)
    metrics["loss"] = sum(g[2] for g in gathered) / max(1, targets.size)
    return {f"{split}_{k}": v for k, v in metrics.items()}


def fit(
    engine: Engine,
    data: LoopData,
    plan: LoopPlan,
    ctx: WorkerContext,
    reporter: Reporter,
    logger: MetricLogger,
    checkpoint_root: Path,
    state: TrainState,
    on_step: Callable[[TrainState], None] = lambda state: None,
) -> TrainState:
    """Train until ``plan.total_steps`` optimizer steps, evaluating, logging and checkpointing on the way."""
    train = data.splits["train"]
    usable = plan.steps_per_epoch * plan.grad_accum  # micro-batches per epoch; the tail of an epoch is dropped
    engine.model.train()
    window: list[torch.Tensor] = []
    window_start = time.perf_counter()
    window_examples = 0
    while state.step < plan.total_steps:
        batches = epoch_batches(
            data.train_lengths,
            plan.global_batch,
            seed=plan.seed,
            epoch=state.epoch,
            bucket=plan.bucket,
            megabatch=plan.megabatch,
        )
        for i in range(state.batch_in_epoch, usable):
            # -- forward / backward on this worker's share of global batch i
            idx = shard_batch(batches[i], ctx.rank, ctx.world_size)
            collated = data.collate([train[j] for j in idx])
            window.append(train_on_batch(engine, collated, ctx.device, boundary=(i + 1) % plan.grad_accum == 0))
            window_examples += len(batches[i])
            if (i + 1) % plan.grad_accum:
                continue
            # -- optimizer step and bookkeeping
            engine.step()
            state.step += 1
            state.examples_seen += plan.global_batch * plan.grad_accum
            state.batch_in_epoch = i + 1
            if state.batch_in_epoch == usable:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            on_step(state)
            final = state.step == plan.total_steps
            if state.step % plan.log_every == 0 or final:
                elapsed = time.perf_counter() - window_start
                logger.log_metrics(
                    {
                        "train_loss": ctx.mean(float(torch.stack(window).double().mean())),
                        "lr": engine.lr(),
                        "examples_per_s": window_examples / max(elapsed, 1e-9),
                        "epoch": state.epoch,
                    },
                    state.step,
                )
                window, window_start, window_examples = [], time.perf_counter(), 0
                reporter.flush()
            # -- evaluate, checkpoint, report
            if state.step % plan.eval_every == 0 or state.step % plan.checkpoint_every == 0 or final:
                metrics = evaluate(engine, data, "val", plan, ctx)
                metrics.update(step=state.step, epoch=state.epoch)
                logger.log_metrics(metrics, state.step)
                checkpoint = None
                if state.step % plan.checkpoint_every == 0 or final:
                    checkpoint = checkpoint_root / f"step-{state.step:08d}"
                    engine.save(checkpoint, ctx)
                    save_state(checkpoint, state, ctx)
                    ctx.barrier()
                reporter.report(metrics, checkpoint)
            if final:
                break
    return state
