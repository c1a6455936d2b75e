"""Batch order: deterministic, complete, length-bucketed, and identical across worker counts."""

from __future__ import annotations

import random

import pytest

from protpeft.data.batching import epoch_batches, padded_tokens, shard_batch

pytestmark = pytest.mark.unit
_rng = random.Random(1)
LENGTHS = [_rng.randint(30, 800) for _ in range(1000)]


def test_every_example_once_per_epoch_and_deterministic() -> None:
    batches = epoch_batches(LENGTHS, 32, seed=3, epoch=0, drop_last=False)
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
    assert batches == epoch_batches(LENGTHS, 32, seed=3, epoch=0, drop_last=False)
    assert batches != epoch_batches(LENGTHS, 32, seed=3, epoch=1, drop_last=False)


def test_drop_last_keeps_full_batches_only() -> None:
    batches = epoch_batches(LENGTHS, 64, seed=0, epoch=0)
    assert len(batches) == len(LENGTHS) // 64 and all(len(b) == 64 for b in batches)


def test_bucketing_cuts_padding() -> None:
    bucketed = epoch_batches(LENGTHS, 16, seed=0, epoch=0, bucket=True)
    plain = epoch_batches(LENGTHS, 16, seed=0, epoch=0, bucket=False)
    real_b, padded_b = padded_tokens(bucketed, LENGTHS)
    real_p, padded_p = padded_tokens(plain, LENGTHS)
    assert real_b / padded_b > 0.9 > real_p / padded_p


def test_two_workers_see_exactly_one_workers_batches() -> None:
    global_batches = epoch_batches(LENGTHS, 32, seed=0, epoch=0)
    for batch in global_batches:
        halves = shard_batch(batch, 0, 2) + shard_batch(batch, 1, 2)
        assert halves == batch and len(shard_batch(batch, 1, 2)) == 16
