"""What both caches (frozen-mode embeddings, LoRA prefix states) share: a directory of safetensors shards that
jobs fill together, each missing entry computed once.

A writer adds a whole new shard through a temporary file + rename, so a reader never sees a half-written file;
the directory's file lock makes concurrent jobs (run-many, Tune trials) fill it in turn, so the second finds
everything the first wrote. Within one job, the leader holds the lock while every worker writes its share.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TypeVar

import torch
from filelock import FileLock
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = ["ShardDir", "cache_root", "coordinated_fill"]

T = TypeVar("T")


def cache_root(configured: str | Path | None = None) -> Path:
    """Where the caches live: the configured directory, else $PROTPEFT_CACHE/embeddings, else
    ~/.cache/protpeft/embeddings (the name predates the prefix cache, which lives beside them there)."""
    if configured is not None:
        return Path(configured)
    return Path(os.environ.get("PROTPEFT_CACHE", Path.home() / ".cache" / "protpeft")) / "embeddings"


class ShardDir:
    """One cache key's directory of ``shard-*.safetensors`` files."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)

    def lock(self) -> FileLock:
        """Held while finding and computing missing entries, so two jobs never compute the same ones."""
        return FileLock(str(self.dir / ".lock"))

    def shards(self) -> list[Path]:
        return sorted(self.dir.glob("shard-*.safetensors"))

    def index(self) -> dict[str, Path]:
        """``{tensor name: shard}`` from the shards' headers (no tensor data is read)."""
        found: dict[str, Path] = {}
        for shard in self.shards():
            with safe_open(shard, framework="pt") as fh:
                found.update(dict.fromkeys(fh.keys(), shard))
        return found

    def keys(self) -> set[str]:
        return set(self.index())

    def load(self, keys: Iterable[str]) -> dict[str, torch.Tensor]:
        wanted = set(keys)
        out: dict[str, torch.Tensor] = {}
        for shard in self.shards():
            with safe_open(shard, framework="pt") as fh:
                for key in wanted.intersection(fh.keys()):
                    out[key] = fh.get_tensor(key)
        return out

    def write(self, tensors: dict[str, torch.Tensor]) -> None:
        """A new shard holding ``tensors`` (moved to CPU, dtype kept), visible all at once."""
        if not tensors:
            return
        name = f"shard-{uuid.uuid4().hex}.safetensors"
        tmp = self.dir / f".{name}.tmp"
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, self.dir / name)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.shards())


def coordinated_fill(
    shards: ShardDir,
    missing: Callable[[set[str]], Sequence[T]],
    fill: Callable[[list[T]], None],
    share: Callable[[list[T]], list[T]] = lambda items: items,
    barrier: Callable[[], None] = lambda: None,
    is_leader: bool = True,
) -> list[T]:
    """Compute what ``shards`` lacks, once across workers and jobs; returns what this process filled.

    ``missing(present keys)`` lists what to compute (the same list on every worker: all of them read the
    directory after the leader holds the lock and before anyone writes), ``share`` picks this worker's part and
    ``fill`` computes and writes it. The leader holds the file lock until every worker's shards are written, so
    another job waiting on the lock then finds everything.

    Workers on nodes that share no disk each find their own directory without the other nodes' shares: then each
    node fills the rest of its copy (the first of its workers to take its local lock; on a shared disk nothing is
    missing and this is a lookup).
    """
    with shards.lock() if is_leader else nullcontext():
        barrier()  # the leader holds the lock before anyone looks
        todo = list(missing(shards.keys()))
        barrier()  # every worker saw the same state before anyone writes
        mine = share(todo)
        if mine:
            fill(mine)
        barrier()  # all shards written
    with shards.lock():
        rest = list(missing(shards.keys()))
        if rest:
            fill(rest)
    return mine + rest
