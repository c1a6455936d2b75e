"""Batch order: seeded per epoch, optionally length-bucketed, identical on every worker, sharded by rank.

The list of *global* batches (``batch_size × world_size`` examples each) depends only on (seed, epoch), so
1 worker with batch 2b sees exactly the examples 2 workers with batch b see together, and a resumed run can skip
to batch k of an epoch without reading data.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

__all__ = ["epoch_batches", "shard_batch", "padded_tokens"]


def epoch_batches(
    lengths: Sequence[int],
    global_batch: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    bucket: bool = True,
    megabatch: int = 50,
    drop_last: bool = True,
) -> list[list[int]]:
    """Indices grouped into batches for one epoch.

    With ``bucket``, examples are shuffled, cut into mega-batches of ``megabatch × global_batch``, sorted by length
    inside each, cut into batches, and the batches shuffled again: similar lengths share a batch (less padding)
    while the epoch stays random.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)
    if bucket:
        size = global_batch * megabatch
        order = [
            i
            for start in range(0, len(order), size)
            for i in sorted(order[start : start + size], key=lengths.__getitem__)
        ]
    batches = [order[i : i + global_batch] for i in range(0, len(order), global_batch)]
    if drop_last and batches and len(batches[-1]) < global_batch:
        batches.pop()
    if shuffle and bucket:
        rng.shuffle(batches)
    return batches


def shard_batch(batch: list[int], rank: int, world_size: int) -> list[int]:
    """This rank's contiguous share of a global batch."""
    per_rank = -(-len(batch) // world_size)
    return batch[rank * per_rank : (rank + 1) * per_rank]


def padded_tokens(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> tuple[int, int]:
    """(real tokens, tokens after padding each batch to its longest) — what bucketing saves."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    return real, padded
