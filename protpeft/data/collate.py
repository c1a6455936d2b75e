"""Examples → model inputs: the batch's distinct sequences, each encoded once, and an ``index`` from every member
slot to its row.

``index`` is member-major (for PPI slots 0..B-1 are proteins A, B..2B-1 proteins B); a protein that several pairs
of the batch hold (a hub) is one row that several slots name. Token rows come longest first, so the model's calls
of at most B rows each pad only to their own longest (see ``protpeft.models.classifier``).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

from protpeft.data.datasets import Example
from protpeft.data.tokens import TokenEncoder

__all__ = ["IndexCollate", "TokenCollate", "distinct", "example_lengths", "member_inputs"]


def _labels(examples: Sequence[Example]) -> torch.Tensor:
    return torch.tensor([e.target for e in examples], dtype=torch.float32)


def distinct(keys: Sequence[Hashable]) -> tuple[list[int], list[int]]:
    """``(first, slot)``: the position of each distinct key's first occurrence, and for every key the number of
    its distinct key (``keys[first[slot[i]]] == keys[i]``)."""
    number: dict[Hashable, int] = {}
    first, slot = [], []
    for i, key in enumerate(keys):
        if key not in number:
            number[key] = len(first)
            first.append(i)
        slot.append(number[key])
    return first, slot


def member_inputs(tokens: TokenEncoder, columns: Sequence[Sequence[str]], dedup: bool = True) -> dict:
    """One column of sequences per member (B each) → ``input_ids`` / ``attention_mask`` of the distinct sequences
    (all of them with ``dedup=False``), longest first, and ``index`` (members x B,) naming each slot's row."""
    flat = [s for column in columns for s in column]
    first, slot = distinct(flat if dedup else range(len(flat)))
    order = sorted(range(len(first)), key=lambda u: -tokens.length(flat[first[u]]))  # stable: ties keep order
    row = [0] * len(order)
    for r, u in enumerate(order):
        row[u] = r
    inputs = tokens.batch([flat[first[u]] for u in order])
    inputs["index"] = torch.tensor([row[u] for u in slot], dtype=torch.long)
    return inputs


class TokenCollate:
    """Token ids + attention mask for the backbone (full and LoRA modes). ``dedup=False`` encodes every member
    slot on its own (the reference the equality tests compare with)."""

    def __init__(self, tokens: TokenEncoder, sequences: dict[str, str], members: int, dedup: bool = True) -> None:
        self.tokens, self.sequences, self.members, self.dedup = tokens, sequences, members, dedup

    def __call__(self, examples: Sequence[Example]) -> dict:
        columns = [[self.sequences[e.members[m]] for e in examples] for m in range(self.members)]
        return {"inputs": member_inputs(self.tokens, columns, self.dedup), "labels": _labels(examples)}


class IndexCollate:
    """Rows of the cached-embedding table (frozen mode): each distinct row once, and the slots' ``index``."""

    def __init__(self, row_of: dict[str, int], members: int) -> None:
        self.row_of, self.members = row_of, members

    def __call__(self, examples: Sequence[Example]) -> dict:
        rows = [self.row_of[e.members[m]] for m in range(self.members) for e in examples]
        first, slot = distinct(rows)
        inputs = {
            "rows": torch.tensor([rows[i] for i in first], dtype=torch.long),
            "index": torch.tensor(slot, dtype=torch.long),
        }
        return {"inputs": inputs, "labels": _labels(examples)}


def example_lengths(examples: Sequence[Example], sequences: dict[str, str], tokens: TokenEncoder) -> list[int]:
    """Padded width an example needs: the token length of its longest member."""
    return [max(tokens.length(sequences[m]) for m in e.members) for e in examples]
