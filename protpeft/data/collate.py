"""Examples → model inputs. Members are stacked member-major: for PPI rows 0..B-1 are proteins A, rows B..2B-1
proteins B, so one backbone call embeds the whole batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from protpeft.data.datasets import Example
from protpeft.data.tokens import TokenEncoder

__all__ = ["IndexCollate", "TokenCollate", "example_lengths"]


def _labels(examples: Sequence[Example]) -> torch.Tensor:
    return torch.tensor([e.target for e in examples], dtype=torch.float32)


class TokenCollate:
    """Token ids + attention mask for the backbone (full and LoRA modes)."""

    def __init__(self, tokens: TokenEncoder, sequences: dict[str, str], members: int) -> None:
        self.tokens, self.sequences, self.members = tokens, sequences, members

    def __call__(self, examples: Sequence[Example]) -> dict:
        seqs = [self.sequences[e.members[m]] for m in range(self.members) for e in examples]
        return {"inputs": self.tokens.batch(seqs), "labels": _labels(examples)}


class IndexCollate:
    """Rows of the cached-embedding table (frozen mode)."""

    def __init__(self, row_of: dict[str, int], members: int) -> None:
        self.row_of, self.members = row_of, members

    def __call__(self, examples: Sequence[Example]) -> dict:
        index = [self.row_of[e.members[m]] for m in range(self.members) for e in examples]
        return {"inputs": {"index": torch.tensor(index, dtype=torch.long)}, "labels": _labels(examples)}


def example_lengths(examples: Sequence[Example], sequences: dict[str, str], tokens: TokenEncoder) -> list[int]:
    """Padded width an example needs: the token length of its longest member."""
    return [max(tokens.length(sequences[m]) for m in e.members) for e in examples]
