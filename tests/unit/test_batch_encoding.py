"""How a batch reaches the backbone: the distinct sequences once each, on CPU in calls of at most one row per
example (on an accelerator in one call), each padded to its own longest — and the same logits and gradients as the
old single call over all members.

Tolerance 1e-6 (fp32): only the padding width of the matrix products changes (the attention mask zeroes padded
keys exactly), so the gap is float rounding; a wrong row, a lost gradient of a shared protein or a member averaged
twice moves logits and gradients by orders of magnitude more.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from protpeft.config import load_config
from protpeft.data.collate import IndexCollate, TokenCollate, distinct
from protpeft.data.datasets import Example
from protpeft.data.tokens import TokenEncoder
from protpeft.models import apply_mode, load_backbone
from protpeft.models.assembly import build_task_model
from protpeft.models.backbone import load_tokenizer
from protpeft.models.classifier import EmbeddingTable, ProteinClassifier, call_slices, encoder_calls

pytestmark = pytest.mark.unit
TOLERANCE = {"atol": 1e-6, "rtol": 1e-6}
LETTERS = "ACDEFGHIKLMNPQRSTVWY"


def random_sequences(n: int, seed: int = 0) -> dict[str, str]:
    rng = random.Random(seed)
    return {f"p{i}": "".join(rng.choices(LETTERS, k=rng.randint(5, 60))) for i in range(n)}


def task_model(tiny_model: Path, task: str, mode: str):
    torch.manual_seed(0)
    cfg = load_config(None, [f"mode={mode}", "lora.last_layers=2", "lora.dropout=0", "model.head_dropout=0"])
    backbone = apply_mode(load_backbone(str(tiny_model)), mode, cfg.lora)
    tokens = TokenEncoder(load_tokenizer(str(tiny_model)))
    model = build_task_model(backbone, task, "mean", 16, 0.0, tokens.special_ids).train()
    return model, tokens


def loss_and_grads(model, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def old_path(model: ProteinClassifier, tokens: TokenEncoder, examples, sequences) -> torch.Tensor:
    """The former forward: all members stacked member-major, one backbone call padded to the longest of all."""
    seqs = [sequences[e.members[m]] for m in range(model.members) for e in examples]
    pooled = model.encoder(**tokens.batch(seqs))
    return model.head(pooled.view(model.members, -1, pooled.shape[-1]).mean(0))


@pytest.mark.parametrize(("task", "mode"), [("ppi", "lora"), ("ppi", "full"), ("symmetry", "lora")])
def test_calls_per_member_match_one_call_over_all_members(tiny_model: Path, task: str, mode: str) -> None:
    model, tokens = task_model(tiny_model, task, mode)
    sequences = random_sequences(16)
    names = list(sequences)
    members = model.members
    examples = [
        Example(
            tuple(names[(i + 7 * m) % 16] for m in range(members)), (float(i % 2),) * model.head.net[-1].out_features
        )
        for i in range(8)
    ]
    labels = torch.tensor([e.target for e in examples])
    batch = TokenCollate(tokens, sequences, members, dedup=False)(examples)["inputs"]
    assert batch["input_ids"].shape[0] == 8 * members  # no duplicates here: every slot its own row

    new_loss, new_grads = loss_and_grads(model, model(**batch), labels)
    old_loss, old_grads = loss_and_grads(model, old_path(model, tokens, examples, sequences), labels)
    model.one_call = True  # as under ZeRO-3: the batch's distinct rows in one call, the same on every rank
    one_loss, one_grads = loss_and_grads(model, model(**batch), labels)
    for loss, grads in ((old_loss, old_grads), (one_loss, one_grads)):
        torch.testing.assert_close(new_loss, loss, **TOLERANCE)
        assert new_grads.keys() == grads.keys() and new_grads
        for name in new_grads:
            torch.testing.assert_close(new_grads[name], grads[name], **TOLERANCE, msg=name)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_a_protein_in_several_pairs_is_encoded_once_with_the_same_loss_and_gradients(
    tiny_model: Path, mode: str
) -> None:
    model, tokens = task_model(tiny_model, "ppi", mode)
    sequences = random_sequences(6, seed=1)
    hub = [("p0", "p1"), ("p0", "p2"), ("p3", "p0"), ("p4", "p5"), ("p1", "p2"), ("p0", "p0")]
    examples = [Example(pair, (float(i % 2),)) for i, pair in enumerate(hub)]
    labels = torch.tensor([e.target for e in examples])
    once = TokenCollate(tokens, sequences, 2)(examples)["inputs"]
    each = TokenCollate(tokens, sequences, 2, dedup=False)(examples)["inputs"]
    assert (once["input_ids"].shape[0], each["input_ids"].shape[0]) == (6, 12)

    loss_once, grads_once = loss_and_grads(model, model(**once), labels)
    loss_each, grads_each = loss_and_grads(model, model(**each), labels)
    torch.testing.assert_close(loss_once, loss_each, **TOLERANCE)
    assert grads_once.keys() == grads_each.keys() and grads_once
    for name in grads_once:
        torch.testing.assert_close(grads_once[name], grads_each[name], **TOLERANCE, msg=name)


def test_rows_come_longest_first_and_the_index_names_each_members_row(tiny_model: Path) -> None:
    tokens = TokenEncoder(load_tokenizer(str(tiny_model)))
    sequences = {"a": "MK", "b": "MKVLAGW", "c": "MKV"}
    examples = [Example(("a", "b"), (1.0,)), Example(("c", "a"), (0.0,))]
    inputs = TokenCollate(tokens, sequences, 2)(examples)["inputs"]
    lengths = inputs["attention_mask"].sum(1).tolist()
    assert lengths == [9, 5, 4]  # b, c, a (+ <cls>, <eos>)
    assert inputs["index"].tolist() == [2, 1, 0, 2]  # a, c | b, a


def test_frozen_rows_are_looked_up_once() -> None:
    table = torch.randn(5, 3)
    model = ProteinClassifier(EmbeddingTable(table), torch.nn.Identity(), 2)
    examples = [Example(("x", "y"), (1.0,)), Example(("y", "z"), (0.0,)), Example(("x", "x"), (0.0,))]
    inputs = IndexCollate({"x": 4, "y": 0, "z": 2}, 2)(examples)["inputs"]
    assert inputs["rows"].tolist() == [4, 0, 2]
    expected = torch.stack([(table[4] + table[0]) / 2, (table[0] + table[2]) / 2, table[4]])
    torch.testing.assert_close(model.embed(**inputs), expected)


def test_call_slices_and_distinct() -> None:
    equal = [10] * 16
    assert call_slices(equal, 8) == [slice(0, 8), slice(8, 16)]  # a PPI batch of 8 pairs: two calls of 8
    assert sorted(c.stop - c.start for c in call_slices(equal[:9], 8)) == [4, 5]  # never a call of 1 beside 8
    assert call_slices(equal[:5], 8) == [slice(0, 5)]
    assert call_slices(equal[:8], 8) == [slice(0, 8)]  # symmetry: one call, as before
    assert call_slices(equal, 8, call_cost=64) == [slice(0, 8), slice(8, 16)]  # nothing to save: fewest calls
    hub = [400, 60, 50, 40]  # one long protein beside short ones
    assert call_slices(hub, 4) == [slice(0, 4)]  # no call cost: the fewest calls
    assert call_slices(hub, 4, call_cost=64) == [slice(0, 1), slice(1, 4)]  # CPU: 580 padded tokens saved
    assert call_slices(hub, 2) == [slice(0, 2), slice(2, 4)]  # at most 2 rows a call: 2 calls are the fewest
    assert call_slices([], 4) == []
    mask = torch.tensor([[1] * 400, [1] * 60 + [0] * 340, [1] * 50 + [0] * 350, [1] * 40 + [0] * 360])
    cpu = [slice(0, 1), slice(1, 3), slice(3, 4)]  # CPU: at most a row per example a call, the long one alone
    assert encoder_calls({"attention_mask": mask}, 2) == cpu
    assert encoder_calls({"attention_mask": mask}, 2, accelerator=True) == [slice(0, 4)]  # GPU: one call of all
    assert distinct(["a", "b", "a", "c", "b"]) == ([0, 1, 3], [0, 1, 0, 2, 1])
