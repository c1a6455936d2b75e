"""The training run's one hook into the LoRA prefix cache: the task model to train, with layers 0..k-1 read from
the cache when that is exact, else the model as it is and one line saying why not."""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from protpeft.config import RunConfig
from protpeft.console import err_console
from protpeft.data.datasets import TaskData
from protpeft.data.tokens import TokenEncoder
from protpeft.models.prefix import PrefixEncoder, esm_model, prefix_split, row_key
from protpeft.modes import MODES
from protpeft.prefix_cache import PrefixCache
from protpeft.trainer.context import WorkerContext
from protpeft.trainer.engines import resolve_precision

__all__ = ["map_prefix_weights", "prefix_cached", "sequences_by_use"]


def sequences_by_use(data: TaskData) -> list[str]:
    """Every sequence of the task, those training reads most first (what a size budget keeps), then val/test."""
    uses = Counter(data.sequences[m] for e in data.splits["train"] for m in e.members)
    rest = [data.sequences[m] for split in ("val", "test") for e in data.splits.get(split, []) for m in e.members]
    return [seq for seq, _ in uses.most_common()] + list(dict.fromkeys(rest))


def _say(ctx: WorkerContext, data: TaskData, line: str) -> None:
    data.notes.append(line)  # recorded in the run's artefact
    if ctx.is_leader:
        err_console.print(line, highlight=False, soft_wrap=True)


def prefix_cached(
    cfg: RunConfig, data: TaskData, model: nn.Module, tokens: TokenEncoder, fingerprint: str, ctx: WorkerContext
) -> tuple[nn.Module, int]:
    """``(model to train, sequences whose prefix this process computed)``.

    ``model`` is the task model built on the prepared backbone; with the cache on, the result shares its backbone
    (adapters) and head and differs only in its encoder, which reads layers 0..k-1 from the cache.
    """
    if not MODES[cfg.mode].prefix_cache:
        return model, 0
    if cfg.data.prefix_cache == "off":
        _say(ctx, data, "prefix cache off: data.prefix_cache = off")
        return model, 0
    backbone = model.encoder.backbone
    k, why = prefix_split(backbone)
    if why is not None:
        _say(ctx, data, f"prefix cache off: {why}")
        return model, 0
    layers = backbone.config.num_hidden_layers
    dtype = resolve_precision(cfg.engine.precision, ctx.device)
    cache = PrefixCache(cfg.data.cache_dir, fingerprint, k, cfg.data.crop, dtype, cfg.data.prefix_cache_max_gb)
    backbone.to(ctx.device)
    encoder = PrefixEncoder(backbone, k, cfg.model.pooling, tokens.special_ids, cache.lookup, cache.map_frozen)
    computed = cache.fill(
        sequences_by_use(data),
        tokens,
        encoder.prefix,
        cfg.optim.eval_batch_size or 4 * cfg.optim.batch_size,
        ctx.device,
        share=lambda seqs: seqs[ctx.rank :: ctx.world_size],
        barrier=ctx.barrier,
        is_leader=ctx.is_leader,
    )
    held = len({seq for seq in data.sequences.values() if _key(tokens, seq) in cache})
    _say(
        ctx,
        data,
        f"prefix cache on: layers 0..{k - 1} of {layers} ({type(esm_model(backbone)).__name__}) read from "
        f"{cache.dir} for {held} of {len(set(data.sequences.values()))} sequences ({computed} computed here)",
    )
    return type(model)(encoder, model.head, model.members), computed


def map_prefix_weights(model: nn.Module, strategy: str, data: TaskData, ctx: WorkerContext) -> int:
    """Once the engine holds the model (DDP has broadcast every weight, which would write into the mapping),
    the frozen weights of the cached layers go to a file mapping shared by the node's jobs (CPU, not DeepSpeed,
    which partitions them). Returns the bytes mapped."""
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, PrefixEncoder) or strategy == "deepspeed":
        return 0
    mapped = encoder.map_prefix()
    if mapped:
        _say(ctx, data, f"prefix cache: the frozen weights of layers 0..{encoder.k - 1} ({mapped / 2**20:.0f} MiB) "
                        "are read from a file mapping, not held in memory")  # fmt: skip
    return mapped


def _key(tokens: TokenEncoder, sequence: str) -> bytes:
    return row_key(torch.from_numpy(tokens.encode(sequence)))
