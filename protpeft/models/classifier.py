"""Task models by composition: an encoder (sequence → vector) + the paper's classification head.

PPI and symmetry share one class: a PPI example has two members (the two proteins, whose embeddings are averaged),
a symmetry example has one. The encoder is either the ESM backbone with pooling, or — in frozen mode — a table of
cached embeddings, so the training loop never knows which.

A batch reaches the model as the *distinct* sequences of its examples (each encoded once, however many examples
hold it; longest first) and an ``index`` from every member slot to its encoded row (``protpeft.data.collate``).
On CPU the rows are encoded in calls of at most one row per example, each call cropped to its own longest sequence:
for a PPI batch of B pairs two calls of B, not one of 2B padded to the longest of all (two calls of B are also
faster at equal length there), and more, shorter calls where that saves more padding than a call costs. On an
accelerator they are encoded in one call, as the plain loop does: there a call's fixed cost (launching a thousand-odd
kernels) outweighs the padding it could save (:func:`encoder_calls`). Gradients of a sequence used twice add up
through the index, as they would for two copies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

__all__ = [
    "ClassificationHead",
    "EmbeddingTable",
    "ProteinClassifier",
    "ProteinEncoder",
    "call_slices",
    "encoder_calls",
    "pool_hidden_states",
]


CPU_CALL_COST_TOKENS = 64
"""What one more encoder call costs on CPU, in padded tokens it may save: on CPU a call's work is close to linear in
the tokens it computes (one call of 2B rows is even slower than two of B), so calls split where padding would cost
more than this (measured: a call's fixed cost is about the work of 35-55 tokens, forward + backward through 8 layers
of the 150M shape on 2 threads, and 4 calls of 1 row x 300 tokens are 15 % faster than 1 call of 4 rows).
Accelerators want few, large calls: there a batch's rows go in one call (measured on an H200, LoRA on the 650M shape
at 4 pairs a step, bf16: two calls of 4 rows ran at 0.53x the speed of a plain loop's one call of 8)."""


def call_slices(lengths: Sequence[int], max_rows: int, call_cost: float = math.inf) -> list[slice]:
    """How a batch's encoded rows (``lengths``, longest first) are split into encoder calls: contiguous calls of at
    most ``max_rows`` rows, each padded to its own longest row, minimising padded tokens + ``call_cost`` per call
    (``inf``: as few calls as possible, and among those the least padding); ties go to near-equal calls."""
    n, max_rows = len(lengths), max(1, max_rows)
    if n == 0:
        return []

    def score(calls: int, tokens: int, squares: int) -> tuple:
        return (calls, tokens, squares) if math.isinf(call_cost) else (tokens + call_cost * calls, squares)

    best: list[tuple[int, int, int] | None] = [(0, 0, 0)] + [None] * n  # (calls, tokens, Σ rows²) of rows[:j]
    start = [0] * (n + 1)
    for j in range(1, n + 1):
        widest = 0
        for i in range(j - 1, max(0, j - max_rows) - 1, -1):
            widest = max(widest, int(lengths[i]))
            calls, tokens, squares = best[i]  # type: ignore[misc]
            here = (calls + 1, tokens + widest * (j - i), squares + (j - i) ** 2)
            if best[j] is None or score(*here) < score(*best[j]):  # type: ignore[misc]
                best[j], start[j] = here, i
    bounds = [n]
    while bounds[-1]:
        bounds.append(start[bounds[-1]])
    bounds.reverse()
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def encoder_calls(inputs: Mapping[str, torch.Tensor], examples: int, accelerator: bool | None = None) -> list[slice]:
    """The calls :class:`ProteinClassifier` encodes a collated batch's rows in: on an accelerator (``None``: where
    ``inputs`` are) one call, reading nothing back from the device; on CPU at most one row per example per call,
    token rows split by their lengths where a call saves more padding than it costs."""
    first = next(iter(inputs.values()))
    if accelerator if accelerator is not None else first.device.type != "cpu":
        return [slice(0, first.shape[0])]
    mask = inputs.get("attention_mask")
    lengths = mask.sum(1).tolist() if mask is not None else [1] * first.shape[0]
    return call_slices(lengths, examples, CPU_CALL_COST_TOKENS)


def trim_padding(inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Right-padded token rows without the columns that are padding in every row (a call of short rows cut from a
    batch padded to a longer one). It reads the widths back, so only CPU calls use it: an accelerator's batch is
    one call, already padded to its longest row by the collate."""
    mask = inputs.get("attention_mask")
    if mask is None:
        return dict(inputs)
    width = int(mask.sum(1).max())
    return {k: v[:, :width] if v.ndim > 1 and width < v.shape[1] else v for k, v in inputs.items()}


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
        """Right-padded rows, as :meth:`TokenEncoder.batch` pads them (to the longest)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool_hidden_states(hidden, input_ids, attention_mask, self.pooling, self.special_ids)


class EmbeddingTable(nn.Module):
    """Frozen mode's encoder: ``rows`` of a precomputed (U, H) embedding matrix. Not a parameter, not saved."""

    def __init__(self, embeddings: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("embeddings", embeddings, persistent=False)

    @property
    def hidden_size(self) -> int:
        return self.embeddings.shape[1]

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.embeddings[rows]


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

    Inputs: the encoder's inputs for the batch's distinct sequences (U rows) and ``index`` (members x B,
    member-major: slots 0..B-1 are the first members, B..2B-1 the second) naming each member's row.
    """

    def __init__(self, encoder: nn.Module, head: ClassificationHead, members: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.members = members
        self.one_call = False
        """Encode a batch's distinct rows in one call instead of :func:`call_slices` (engines whose module calls are
        collective, such as DeepSpeed ZeRO-3, need the same number of calls on every rank)."""

    def call_inputs(self, examples: int, inputs: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """The encoder's inputs for each call over a batch of ``examples`` (:func:`encoder_calls`): the batch as
        collated when it is one call (nothing sliced, trimmed or read back), else each call's rows trimmed to their
        longest (every encoder sees the same shapes: dropout draws the same randomness in all of them)."""
        rows = next(iter(inputs.values())).shape[0]
        calls = [slice(0, rows)] if self.one_call else encoder_calls(inputs, examples)
        if len(calls) == 1:
            return [dict(inputs)]
        return [trim_padding({k: v[part] for k, v in inputs.items()}) for part in calls]

    def embed(self, index: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        parts = [self.encoder(**call) for call in self.call_inputs(index.numel() // self.members, inputs)]
        pooled = parts[0] if len(parts) == 1 else torch.cat(parts)
        return pooled[index].view(self.members, -1, pooled.shape[-1]).mean(0)

    def forward(self, index: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(index, **inputs))

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        """Logits (B, outputs) from examples' member-averaged embeddings (B, H), cast to the head's dtype (the
        encoder may run in another precision). Serving calls it directly on cached pooled vectors."""
        return self.head(embedding.to(self.head.net[1].weight.dtype))

    def classify_members(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits (B, outputs) from the pooled vectors of each example's members held example by example
        ((B x members, H): example 0's members first), as serving's cache returns them."""
        return self.classify(pooled.view(-1, self.members, pooled.shape[-1]).mean(1))
