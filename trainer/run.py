"""``run_training``: a run from its config to its run directory, top to bottom as named steps.

The same function runs in one process (``protpeft train --local``, unit tests) and inside each Ray Train worker;
only the context, reporter and logger passed in differ.
"""

from __future__ import annotations

import random
import resource
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

import protpeft
from protpeft.artifact import RunArtifact, write_artifact
from protpeft.config import RunConfig
from protpeft.data.collate import IndexCollate, TokenCollate, example_lengths
from protpeft.data.datasets import TaskData, load_task_data
from protpeft.data.tokens import TokenEncoder
from protpeft.embeddings import EmbeddingCache, embed_sequences
from protpeft.models.assembly import build_task_model
from protpeft.models.backbone import backbone_fingerprint, load_backbone, load_tokenizer
from protpeft.models.classifier import EmbeddingTable, ProteinClassifier, ProteinEncoder
from protpeft.models.modes import apply_mode, count_parameters
from protpeft.models.prefix import count_prefix_rows
from protpeft.modes import MODES
from protpeft.tracking import JsonlLogger, MetricLogger, MultiLogger, NullLogger
from protpeft.trainer.checkpoints import LocalReporter, Reporter, TrainState, load_state
from protpeft.trainer.context import WorkerContext
from protpeft.trainer.engines import build_engine, resolve_precision, resolve_strategy
from protpeft.trainer.loop import LoopData, evaluate, fit, plan_steps
from protpeft.trainer.prefix import map_prefix_weights, prefix_cached

__all__ = ["RunInputs", "RunResult", "run_training"]


@dataclass
class RunInputs:
    """What a run reads when its driver already has it: the validated task data (sent through Ray's object store
    instead of read from the driver's files), and the base model's files on this node (a staged copy)."""

    data: TaskData | None = None
    base_dir: str | None = None
    """A local directory holding the base model's files; the artefact still names ``cfg.model.base``."""


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, float]
    params: dict[str, int]
    state: TrainState
    seconds: float
    peak_memory_mb: float
    embedded_sequences: int = 0
    strategy: str = "local"
    prefix_forwards: int = 0
    model: Any = field(default=None, repr=False)
    """The trained task model in memory (encoder = backbone in every mode), for tests and benchmarks."""

    def summary(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "metrics": self.metrics,
            "params": self.params,
            "steps": self.state.step,
            "seconds": round(self.seconds, 2),
            "peak_memory_mb": round(self.peak_memory_mb, 1),
            "embedded_sequences": self.embedded_sequences,
            "prefix_forwards": self.prefix_forwards,
            "strategy": self.strategy,
        }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def frozen_table(
    cfg: RunConfig,
    data: TaskData,
    encoder: ProteinEncoder,
    tokens: TokenEncoder,
    fingerprint: str,
    ctx: WorkerContext,
) -> tuple[EmbeddingTable, dict[str, int], int]:
    """Embed every sequence of the task once (shared across workers and across jobs through the cache)."""
    cache = EmbeddingCache(cfg.data.cache_dir, fingerprint, cfg.model.pooling, cfg.data.crop)
    batch = cfg.optim.eval_batch_size or 4 * cfg.optim.batch_size
    dtype = resolve_precision(cfg.engine.precision, ctx.device)
    encoder.to(ctx.device)

    def embed(seqs: list[str]) -> torch.Tensor:
        return embed_sequences(encoder, tokens, seqs, batch, ctx.device, dtype)

    table, row_of, embedded = cache.table(
        data.sequences,
        embed,
        share=lambda seqs: seqs[ctx.rank :: ctx.world_size],
        barrier=ctx.barrier,
        is_leader=ctx.is_leader,
    )
    return EmbeddingTable(table), row_of, embedded


def build_loop_data(cfg: RunConfig, data: TaskData, tokens: TokenEncoder, collate) -> LoopData:
    lengths = {name: example_lengths(exs, data.sequences, tokens) for name, exs in data.splits.items()}
    return LoopData(data.splits, collate, lengths["train"], lengths, cfg.task, data.label_names)


def run_training(
    cfg: RunConfig,
    *,
    ctx: WorkerContext | None = None,
    reporter: Reporter | None = None,
    logger: MetricLogger | None = None,
    resume_from: Path | None = None,
    checkpoint_root: Path | None = None,
    progress: bool = False,
    inputs: RunInputs | None = None,
    artifact_dir: Path | None = None,
) -> RunResult:
    """Train ``cfg`` and write its artefact (leader only) to ``artifact_dir`` (default: the run directory), then
    hand it to ``reporter.publish``. Returns final val + test metrics.

    ``inputs``: what the driver already read (the task data; where the base model's files are on this node).
    A ``logger`` marked ``on_every_rank`` is called on every worker and writes no ``metrics.jsonl`` here (under Ray
    the driver writes it); any other logger is the leader's, next to the run directory's ``metrics.jsonl``."""
    started = time.perf_counter()
    ctx = ctx or WorkerContext.local()
    inputs = inputs or RunInputs()
    run_dir = cfg.run_dir
    artifact_dir = artifact_dir or run_dir
    checkpoint_root = checkpoint_root or run_dir / "checkpoints"
    tracking_run_id = getattr(logger, "run_id", None)  # recorded in the artefact: its registered versions link to it
    if getattr(logger, "on_every_rank", False):
        pass
    elif ctx.is_leader:
        logger = MultiLogger(logger or NullLogger(), JsonlLogger(run_dir / "metrics.jsonl"))
    else:
        logger = NullLogger()
    if ctx.is_leader:
        logger.log_config(cfg.to_dict())
    reporter = reporter or LocalReporter(
        checkpoint_root, cfg.engine.keep_checkpoints, cfg.engine.checkpoint_metric, cfg.engine.checkpoint_mode
    )
    seed_everything(cfg.optim.seed)
    mode = MODES[cfg.mode]

    # -- data, tokenizer, backbone
    data = inputs.data or load_task_data(cfg.task, cfg.data)
    base_files = inputs.base_dir or cfg.model.base
    tokenizer = load_tokenizer(base_files)
    tokens = TokenEncoder(tokenizer, cfg.data.crop)
    backbone = load_backbone(base_files)
    fingerprint = backbone_fingerprint(backbone)
    prefix_rows = count_prefix_rows(backbone)

    # -- mode: what is trainable; a mode that reads embeddings (frozen) trains on cached ones
    backbone = apply_mode(backbone, cfg.mode, cfg.lora)
    torch.manual_seed(cfg.optim.seed)  # identical head init on every worker and every resume
    full_model = build_task_model(
        backbone, cfg.task, cfg.model.pooling, cfg.model.head_hidden, cfg.model.head_dropout, tokens.special_ids
    )
    members = full_model.members
    params = count_parameters(full_model)
    embedded = 0
    if mode.encoder == "embeddings":
        table, row_of, embedded = frozen_table(cfg, data, full_model.encoder, tokens, fingerprint, ctx)
        model = ProteinClassifier(table, full_model.head, members)
        collate = IndexCollate(row_of, members)
    else:
        model, collate = full_model, TokenCollate(tokens, data.sequences, members)
        model, embedded = prefix_cached(cfg, data, model, tokens, fingerprint, ctx)  # LoRA: frozen layers cached
    loop_data = build_loop_data(cfg, data, tokens, collate)

    # -- engine, resume, fit
    plan = plan_steps(cfg, len(data.splits["train"]), ctx.world_size)
    strategy = resolve_strategy(cfg, ctx)
    engine = build_engine(strategy, model, cfg, plan.total_steps, ctx)
    map_prefix_weights(model, strategy, data, ctx)
    state = TrainState()
    if resume_from is not None:
        engine.load(Path(resume_from))
        state = load_state(Path(resume_from), ctx)
    with _progress(progress and ctx.is_leader, plan.total_steps, state.step) as on_step:
        state = fit(engine, loop_data, plan, ctx, reporter, logger, checkpoint_root, state, on_step)
    metrics = evaluate(engine, loop_data, "val", plan, ctx)
    metrics.update(evaluate(engine, loop_data, "test", plan, ctx))

    # -- artefact
    seconds = time.perf_counter() - started
    memory = peak_memory_mb(ctx.device)
    prefix_forwards = sum(ctx.all_gather_object(prefix_rows()))
    trained = engine.unwrapped()
    saved_backbone = trained.encoder.backbone if mode.saves_backbone else None
    if strategy == "deepspeed":
        saved_backbone = engine.consolidated_backbone(saved_backbone) if saved_backbone is not None else None
    if ctx.is_leader:
        artifact = RunArtifact(
            task=cfg.task,
            mode=cfg.mode,
            base_model=cfg.model.base,
            base_fingerprint=fingerprint,
            label_names=data.label_names,
            pooling=cfg.model.pooling,
            crop=cfg.data.crop,
            head_hidden=cfg.model.head_hidden,
            metrics=metrics,
            params=params,
            config=cfg.to_dict(),
            protpeft_version=protpeft.__version__,
            dataset_fingerprint=data.fingerprint,
            data_notes=data.notes,
            split_counts=data.counts(),
            steps=state.step,
            seconds=round(seconds, 2),
            peak_memory_mb=round(memory, 1),
            strategy=strategy,
            workers=ctx.world_size,
            embedded_sequences=embedded,
            prefix_forwards=prefix_forwards,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            mlflow_run_id=tracking_run_id,
        )
        write_artifact(artifact_dir, artifact, trained.head, saved_backbone, tokenizer)
        logger.log_metrics({f"final_{k}": v for k, v in metrics.items()}, state.step)
        logger.log_run_dir(artifact_dir, artifact)
    ctx.barrier()
    reporter.publish({**metrics, "step": state.step, "epoch": state.epoch}, artifact_dir)
    full_model.head = trained.head
    return RunResult(
        run_dir, metrics, params, state, seconds, memory, embedded, strategy, prefix_forwards, full_model.cpu()
    )


class _progress:
    """A Rich progress bar over optimizer steps on the leader; a no-op elsewhere."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled, self.total, self.done = enabled, total, done

    def __enter__(self):
        if not self.enabled:
            return lambda state: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        self.bar.start()
        task = self.bar.add_task("steps", total=self.total, completed=self.done)
        return lambda state: self.bar.update(task, completed=state.step)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.stop()
