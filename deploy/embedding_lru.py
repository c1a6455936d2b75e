"""The serving replica's exact per-protein embedding cache: a bounded LRU of pooled representations.

What a model's head receives for one protein is its *pooled representation*: the backbone's token states for the
sequence, pooled (mean over residues or ``<cls>``). It depends only on the encoder and the sequence, so a protein
seen in an earlier request need not be encoded again. The key says everything the value depends on:

- the encoder: the shared base (frozen-mode versions on one base all share it), the LoRA adapter on it (one per
  version), or a full fine-tune's own backbone — :attr:`protpeft.deploy.model_store.ServedModel.encoder_key`;
- pooling and crop (a model's own settings);
- the sequence itself (not a hash: a hit is the same string).

Entries of a released version are dropped with it (:meth:`EmbeddingLRU.forget`). Capacity counts entries; one entry
holds ``hidden_size`` float32 values (1.3 KB for ESM-2 8M, 5 KB for 650M) plus its key. Capacity 0 turns it off.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing this module stays cheap (``protpeft serve --help`` reads the default size)
    import torch

__all__ = ["DEFAULT_EMBEDDING_CACHE_SIZE", "CacheKey", "EmbeddingLRU"]

DEFAULT_EMBEDDING_CACHE_SIZE = 16384
"""Entries: ~25 MB for ESM-2 8M, ~90 MB for 650M (a few thousand proteins per proteome screened)."""

CacheKey = tuple[str, str]
"""(encoder key with pooling and crop, sequence)."""


class EmbeddingLRU:
    """Pooled representations by :data:`CacheKey`, least recently used first out; counts hits and misses.

    Thread-safe (the model thread reads and writes, ``/metrics`` reads the counters from the event loop).
    """

    def __init__(self, capacity: int = DEFAULT_EMBEDDING_CACHE_SIZE) -> None:
        self.capacity = max(0, int(capacity))
        self._entries: OrderedDict[CacheKey, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, keys: Iterable[CacheKey]) -> dict[CacheKey, torch.Tensor]:
        """The cached rows among ``keys`` (each counted once as a hit or a miss), marked as recently used."""
        found: dict[CacheKey, torch.Tensor] = {}
        with self._lock:
            for key in keys:
                row = self._entries.get(key)
                if row is None:
                    self.misses += 1
                    continue
                self.hits += 1
                self._entries.move_to_end(key)
                found[key] = row
        return found

    def store(self, rows: Mapping[CacheKey, torch.Tensor]) -> None:
        """Keep ``rows`` (1-D tensors, not views into a larger batch: a view would keep the whole batch alive)."""
        if not self.capacity:
            return
        with self._lock:
            for key, row in rows.items():
                self._entries[key] = row
                self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def forget(self, encoder_key_prefix: str) -> int:
        """Drop every entry of an encoder (a released version's adapter, a freed base); returns how many."""
        with self._lock:
            gone = [k for k in self._entries if k[0].startswith(encoder_key_prefix)]
            for key in gone:
                del self._entries[key]
        return len(gone)
