"""Frozen mode's embedding cache: each unique sequence goes through the backbone once, ever.

Key = backbone fingerprint + pooling + crop (a directory) + sha1 of the sequence (a tensor name). Embeddings live
in safetensors shards; a writer adds a new shard through a temporary file + rename, so concurrent jobs (Ray
workers, Tune trials) never see half-written files, and a file lock makes concurrent jobs embed each sequence once.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from filelock import FileLock
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = ["EmbeddingCache", "default_cache_root", "sequence_key"]


def default_cache_root() -> Path:
    return Path(os.environ.get("PROTPEFT_CACHE", Path.home() / ".cache" / "protpeft")) / "embeddings"


def sequence_key(sequence: str) -> str:
    return hashlib.sha1(sequence.encode()).hexdigest()


class EmbeddingCache:
    def __init__(self, root: str | Path | None, fingerprint: str, pooling: str, crop: int) -> None:
        self.dir = Path(root or default_cache_root()) / f"{fingerprint}-{pooling}-crop{crop}"
        self.dir.mkdir(parents=True, exist_ok=True)

    def lock(self) -> FileLock:
        """Held while finding and embedding missing sequences, so two jobs never embed the same ones."""
        return FileLock(str(self.dir / ".lock"))

    def shards(self) -> list[Path]:
        return sorted(self.dir.glob("shard-*.safetensors"))

    def keys(self) -> set[str]:
        found: set[str] = set()
        for shard in self.shards():
            with safe_open(shard, framework="pt") as fh:
                found.update(fh.keys())
        return found

    def load(self, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        wanted = set(keys)
        out: dict[str, torch.Tensor] = {}
        for shard in self.shards():
            with safe_open(shard, framework="pt") as fh:
                for key in wanted.intersection(fh.keys()):
                    out[key] = fh.get_tensor(key)
        return out

    def store(self, embeddings: dict[str, torch.Tensor]) -> None:
        if not embeddings:
            return
        name = f"shard-{uuid.uuid4().hex}.safetensors"
        tmp = self.dir / f".{name}.tmp"
        save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in embeddings.items()}, tmp)
        os.replace(tmp, self.dir / name)

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
        with self.lock() if is_leader else nullcontext():
            barrier()  # the leader holds the lock before anyone looks
            present = self.keys()
            barrier()  # every worker saw the same state before anyone writes
            mine = share([s for s in unique if key_of[s] not in present])
            if mine:
                self.store({key_of[s]: v for s, v in zip(mine, embed(mine), strict=True)})
            barrier()  # all shards written
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
