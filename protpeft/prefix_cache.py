"""The LoRA prefix cache: each sequence's hidden states entering layer k, computed once, read memory-mapped.

Key = base fingerprint + k + crop + dtype (a directory beside the embedding caches, named ``prefix-…``) + sha1 of
the sequence's cropped token ids (a tensor name). A tensor is one sequence's (length, H) states, no padding
stored. Filling is batched, no-grad and length-bucketed, coordinated across workers and jobs by
:func:`protpeft.shards.coordinated_fill` (a Tune trial never recomputes what another wrote). Reading goes through
safetensors' memory-mapped ``safe_open``, kept open: ``get_tensor`` returns a view of the mapping (no copy, ~25 µs),
so the page cache is the RAM cache — shared by every process of the node (Tune trials, run-many jobs), dropped by
the kernel under memory pressure, and no per-process copy is held. What the size budget leaves out — or what
another node's disk holds — is computed on the fly, so the cache only ever changes speed, never results. Where
workers do not share a disk, each node fills its own copy (see :meth:`PrefixCache.fill`).

The frozen weights of layers 0..k-1 are needed only for what must be computed on the fly. :meth:`map_frozen` keeps
them in a file of the same directory, mapped copy-on-write: the model keeps working (a page is read from disk when
touched), but once the cache holds every sequence they are not resident, and all processes of a node share them.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from protpeft.models.prefix import prefix_forward, row_key
from protpeft.shards import ShardDir, cache_root, coordinated_fill

__all__ = ["PREFIX_DIR", "PrefixCache"]

PREFIX_DIR = "prefix-"
"""Name prefix of the prefix caches' directories (the embedding caches' directories start with a fingerprint)."""
SHARD_BYTES = 256 * 2**20
"""A filling worker writes a shard whenever it holds this much."""


def _name(key: bytes) -> str:
    return hashlib.sha1(key).hexdigest()


class PrefixCache(ShardDir):
    def __init__(
        self,
        root: str | Path | None,
        fingerprint: str,
        k: int,
        crop: int,
        dtype: torch.dtype,
        max_gb: float,
    ) -> None:
        dtype_name = str(dtype).removeprefix("torch.")
        super().__init__(cache_root(root) / f"{PREFIX_DIR}{fingerprint}-k{k}-crop{crop}-{dtype_name}")
        self.dtype, self.max_bytes = dtype, int(max_gb * 2**30)
        self._where: dict[str, Path] = {}
        self._handles: dict[Path, object] = {}
        self.read = 0
        """Sequences read from the cache."""
        self.computed = 0
        """Sequences whose prefix was computed on the fly (over the budget, or not on this node's disk)."""

    # -- filling

    def fill(
        self,
        sequences: Sequence[str],
        tokens,
        prefix: torch.nn.Module,
        batch_size: int,
        device: torch.device,
        share: Callable[[list[str]], list[str]] = lambda items: items,
        barrier: Callable[[], None] = lambda: None,
        is_leader: bool = True,
    ) -> int:
        """Compute and store the prefix of every sequence the cache lacks, most important first (``sequences``'
        order) while the size budget lasts. Returns how many this process computed."""
        ids_of = {seq: tokens.encode(seq) for seq in dict.fromkeys(sequences)}
        name_of = {seq: _name(row_key(torch.from_numpy(ids))) for seq, ids in ids_of.items()}
        row_bytes = prefix.config.hidden_size * torch.finfo(self.dtype).bits // 8

        def missing(present: set[str]) -> list[str]:
            budget = self.max_bytes - self.size_bytes()
            todo, taken = [], set(present)
            for seq, name in name_of.items():
                cost = len(ids_of[seq]) * row_bytes
                if name not in taken and cost <= budget:
                    todo.append(seq)
                    taken.add(name)
                    budget -= cost
            return sorted(todo, key=lambda s: (len(ids_of[s]), s))  # length buckets: little padding per batch

        def fill(mine: list[str]) -> None:
            prefix.eval()
            pending: dict[str, torch.Tensor] = {}
            held = 0
            autocast = torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)
            for start in range(0, len(mine), batch_size):
                chunk = mine[start : start + batch_size]
                batch = {key: v.to(device) for key, v in tokens.batch(chunk).items()}
                with autocast:
                    states = prefix_forward(prefix, batch["input_ids"], batch["attention_mask"])
                for seq, state in zip(chunk, states, strict=True):
                    pending[name_of[seq]] = state.to("cpu", self.dtype)
                    held += state.numel() * state.element_size()
                if held >= SHARD_BYTES:
                    self.write(pending)
                    pending, held = {}, 0
            self.write(pending)

        mine = coordinated_fill(self, missing, fill, share, barrier, is_leader)
        self.refresh()
        return len(mine)

    # -- reading

    def refresh(self) -> None:
        """Re-read which shard holds what (after this or another job filled)."""
        self._where = self.index()

    def __contains__(self, key: bytes) -> bool:
        return _name(key) in self._where

    def _get(self, name: str) -> torch.Tensor | None:
        shard = self._where.get(name)
        if shard is None:
            return None
        handle = self._handles.get(shard)
        if handle is None:
            handle = self._handles[shard] = safe_open(shard, framework="pt")  # memory-mapped, kept open
        return handle.get_tensor(name)

    def lookup(self, keys: list[bytes], compute: Callable[[list[int]], list[torch.Tensor]]) -> list[torch.Tensor]:
        """One (length, H) state per row key; ``compute(rows)`` supplies those the cache does not hold."""
        out: list[torch.Tensor | None] = [self._get(_name(key)) for key in keys]
        absent = [i for i, state in enumerate(out) if state is None]
        if absent:
            for i, state in zip(absent, compute(absent), strict=True):
                out[i] = state.to(self.dtype)
        self.read += len(keys) - len(absent)
        self.computed += len(absent)
        return out  # type: ignore[return-value]

    # -- the frozen weights

    def map_frozen(self, params: dict[str, torch.Tensor]) -> int:
        """Point each of ``params`` (frozen CPU tensors, by name) at a copy-on-write file mapping of the same values
        (``frozen-<names hash>.safetensors`` here, written once under the lock, shared by later jobs); returns the
        bytes no longer held in the process's own memory. A file found with other shapes or values is an error."""
        names = sorted(params)
        path = self.dir / f"frozen-{hashlib.sha1(' '.join(names).encode()).hexdigest()[:12]}.safetensors"
        with self.lock():
            if not path.is_file():
                tmp = self.dir / f".{path.name}.{uuid.uuid4().hex}.tmp"
                save_file({n: params[n].detach().contiguous() for n in names}, tmp)
                os.replace(tmp, path)
        mapped = 0
        with safe_open(path, framework="pt") as stored:  # get_tensor maps the file privately: copy-on-write pages
            held = set(stored.keys())
            for name in names:
                param = params[name]
                view = stored.get_tensor(name) if name in held else None
                if view is None or view.shape != param.shape or view.dtype != param.dtype:
                    raise RuntimeError(f"{path}: {name} is not stored with the model's shape and dtype")
                sample = slice(None, None, max(1, param.numel() // 256))
                if not torch.equal(view.reshape(-1)[sample], param.detach().reshape(-1)[sample]):
                    raise RuntimeError(f"{path}: {name} holds other values than the model's (a different base?)")
                param.data = view
                mapped += view.nbytes
        return mapped
