"""ESM tokenisation, vectorised: one lookup table built from the tokenizer's own vocabulary.

``EsmTokenizer`` is pure Python (no fast variant exists) and splits through a trie; encoding 100k sequences with
it takes minutes. Residue letters map one-to-one onto tokens, so a byte lookup gives the same ids (a unit test
checks equality with the tokenizer) at numpy speed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["TokenEncoder"]


class TokenEncoder:
    """``<cls>`` + residues + ``<eos>``, cropped to ``crop`` tokens in total, padded with ESM's pad id (1)."""

    def __init__(self, tokenizer, crop: int = 1024) -> None:
        vocab = tokenizer.get_vocab()
        self.cls_id = int(tokenizer.cls_token_id)
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id)
        self.unk_id = int(tokenizer.unk_token_id)
        self.crop = crop
        self._lookup = np.full(256, self.unk_id, dtype=np.int64)
        for token, idx in vocab.items():
            if len(token) == 1:
                self._lookup[ord(token)] = idx

    @property
    def special_ids(self) -> tuple[int, ...]:
        return (self.cls_id, self.eos_id)

    def length(self, sequence: str) -> int:
        """Token count of ``sequence`` after cropping (special tokens included)."""
        return min(len(sequence) + 2, self.crop)

    def encode(self, sequence: str) -> np.ndarray:
        residues = np.frombuffer(sequence[: self.crop - 2].encode("ascii"), dtype=np.uint8)
        ids = np.empty(len(residues) + 2, dtype=np.int64)
        ids[0], ids[-1] = self.cls_id, self.eos_id
        ids[1:-1] = self._lookup[residues]
        return ids

    def batch(self, sequences: Sequence[str]) -> dict[str, torch.Tensor]:
        """Encode and right-pad to the longest: ``input_ids`` and ``attention_mask``, both (N, L) int64."""
        encoded = [self.encode(s) for s in sequences]
        width = max(len(e) for e in encoded)
        input_ids = np.full((len(encoded), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encoded), width), dtype=np.int64)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
