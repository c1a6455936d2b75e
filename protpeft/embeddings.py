"""Frozen mode's embedding cache: each unique sequence goes through the backbone once, ever.

Key = backbone fingerprint + pooling + crop (a directory) + sha1 of the sequence (a tensor name). Embeddings live
in safetensors shards, filled as :mod:`protpeft.shards` fills both caches: whole shards renamed into place, a file
lock so concurrent jobs (Ray workers, Tune trials) embed each sequence once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from protpeft.shards import ShardDir, cache_root, coordinated_fill

__all__ = ["EmbeddingCache", "default_cache_root", "sequence_key"]


def default_cache_root() -> Path:
    return cache_root()


def sequence_key(sequence: str) -> str:
    return hashlib.sha1(sequence.encode()).hexdigest()


class EmbeddingCache(ShardDir):
    def __init__(self, root: str | Path | None, fingerprint: str, pooling: str, crop: int) -> None:
        super().__init__(cache_root(root) / f"{fingerprint}-{pooling}-crop{crop}")

    def store(self, embeddings: dict[str, torch.Tensor]) -> None:
        self.write({k: v.to(torch.float32) for k, v in embeddings.items()})

    def table(
        self,
        sequences: dict[str, str],
        embed: Callable[[list[str]], torch.Tensor],
        share: Callable[[list[str]], list[str]] = lambda seqs: seqs,
        barrier: Callable[[], None] = lambda: None,
        is_leader: bool = True,
    ) -> tuple[torch.Tensor, dict[str, int], int]:
        """An (U, H) table for ``{id: sequence}``, its ``{id: row}`` map, and how many sequences this process
        embedded.

        With several workers, ``share`` picks this worker's part of the missing sequences and ``barrier`` syncs
        them; only the leader takes the file lock, and holds it until every worker's shard is written, so another
        job waiting on the lock then finds everything embedded.
        """
        unique = sorted(set(sequences.values()))
        key_of = {seq: sequence_key(seq) for seq in unique}

        def fill(mine: list[str]) -> None:
            self.store({key_of[s]: v for s, v in zip(mine, embed(mine), strict=True)})

        mine = coordinated_fill(
            self, lambda present: [s for s in unique if key_of[s] not in present], fill, share, barrier, is_leader
        )
        loaded = self.load(list(key_of.values()))
        lost = [s for s in unique if key_of[s] not in loaded]
        if lost:
            raise RuntimeError(f"embedding cache {self.dir}: {len(lost)} sequences missing after embedding")
        rows = {seq: i for i, seq in enumerate(unique)}
        table = torch.stack([loaded[key_of[s]] for s in unique])
        return table, {sid: rows[seq] for sid, seq in sequences.items()}, len(mine)


@torch.no_grad()
def embed_sequences(encoder, tokens, sequences: Sequence[str], batch_size: int, device, dtype=torch.float32):
    """Pooled backbone embeddings (N, H) in input order; batched by length, no gradients, eval mode."""
    encoder.eval()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out = torch.empty(len(sequences), encoder.hidden_size)
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        inputs = {k: v.to(device) for k, v in tokens.batch([sequences[i] for i in idx]).items()}
        with autocast:
            out[idx] = encoder(**inputs).float().cpu()
    return out
