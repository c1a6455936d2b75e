"""Task models by composition: an encoder (sequence → vector) + the paper's classification head.

PPI and symmetry share one class: a PPI example has two members (the two proteins, whose embeddings are averaged),
a symmetry example has one. The encoder is either the ESM backbone with pooling, or — in frozen mode — a table of
cached embeddings, so the training loop never knows which.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "ClassificationHead",
    "EmbeddingTable",
    "ProteinClassifier",
    "ProteinEncoder",
    "pool_hidden_states",
]


def pool_hidden_states(
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pooling: str,
    special_ids: tuple[int, ...],
) -> torch.Tensor:
    """(N, L, H) token states → (N, H). ``mean`` averages residue tokens only (no <cls>, <eos>, padding); ``cls``
    takes the <cls> state. (ESM-2 checkpoints ship no trained pooler, so we never use ``pooler_output``.)"""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.bool()
    for token_id in special_ids:
        mask &= input_ids != token_id
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class ProteinEncoder(nn.Module):
    """ESM backbone (plain or peft-wrapped) + pooling: token ids → one vector per sequence."""

    def __init__(self, backbone: nn.Module, pooling: str, special_ids: tuple[int, ...] = (0, 2)) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.special_ids = special_ids

    @property
    def hidden_size(self) -> int:
        return self.backbone.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool_hidden_states(hidden, input_ids, attention_mask, self.pooling, self.special_ids)


class EmbeddingTable(nn.Module):
    """Frozen mode's encoder: row ``index`` of a precomputed (U, H) embedding matrix. Not a parameter, not saved."""

    def __init__(self, embeddings: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("embeddings", embeddings, persistent=False)

    @property
    def hidden_size(self) -> int:
        return self.embeddings.shape[1]

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.embeddings[index]


class ClassificationHead(nn.Module):
    """The paper's head: dropout → Linear(H, hidden) → tanh → dropout → Linear(hidden, outputs)."""

    def __init__(self, in_features: int, hidden: int, outputs: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(in_features, hidden),
            nn.Tanh(),
            nn.Dropout(dropout),
            nn.Linear(hidden, outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ProteinClassifier(nn.Module):
    """encoder → (average over the ``members`` of each example) → head → logits (B, outputs).

    Encoder inputs hold all members stacked: for PPI the first B rows are proteins A, the next B proteins B, so the
    backbone runs once per batch over 2B sequences.
    """

    def __init__(self, encoder: nn.Module, head: ClassificationHead, members: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.members = members

    def embed(self, **inputs: torch.Tensor) -> torch.Tensor:
        pooled = self.encoder(**inputs)
        return pooled.view(self.members, -1, pooled.shape[-1]).mean(0)

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        embedding = self.embed(**inputs)
        return self.head(embedding.to(self.head.net[1].weight.dtype))
