"""Train / val / test splits: split names in files, seeded random splits, and splits of PPI pairs by protein."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from protpeft.errors import InputError

if TYPE_CHECKING:
    from protpeft.data.pairs import PairRecord

__all__ = [
    "SPLITS",
    "check_no_empty_splits",
    "normalize_split_name",
    "random_split",
    "split_pairs_by_protein",
]

SPLITS = ("train", "val", "test")

_SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}

SPLIT_EXPECTED = "expected train, val or test"


def normalize_split_name(value: str) -> str | None:
    """``'Training'`` → ``'train'``, ``'dev'`` → ``'val'``, ``'testing'`` → ``'test'``; None for anything else."""
    return _SPLIT_NAMES.get(value.strip().lower())


def split_problem(value: str) -> str:
    """The message for a split value that is not a split name."""
    if not value.strip():
        return f"split is empty ({SPLIT_EXPECTED})"
    return f"split '{value}' is not a split name ({SPLIT_EXPECTED})"


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 or math.isnan(f) for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    return float(fractions[0]), float(fractions[1]), float(fractions[2])


def split_counts(n: int, fractions: Sequence[float]) -> dict[str, int]:
    """Exact example counts per split: val and test are rounded, train gets the remainder."""
    _, f_val, f_test = _check_fractions(fractions)
    n_val = min(n, round(n * f_val))
    n_test = min(n - n_val, round(n * f_test))
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def random_split(n: int, fractions: tuple[float, float, float], seed: int) -> list[str]:
    """A seeded assignment of ``n`` examples to train / val / test with exact counts (see :func:`split_counts`)."""
    counts = split_counts(n, fractions)
    labels = [name for name in SPLITS for _ in range(counts[name])]
    random.Random(seed).shuffle(labels)
    return labels


def split_pairs_by_protein(
    pairs: Sequence[PairRecord], fractions: tuple[float, float, float], seed: int
) -> tuple[list[str | None], dict]:
    """Assign each protein to one split, so no protein is seen in two splits; a pair keeps its proteins' split.

    A pair whose two proteins land in different splits is dropped (None). Since a pair survives with probability
    about ``p_split**2``, proteins are assigned in proportions ``sqrt(fraction)`` (normalised), which makes the kept
    pairs' split fractions approximately ``fractions``. Proteins are processed in sorted order with a seeded RNG,
    with exact counts per split, so the result is deterministic.

    Returns:
        the split (or None) of each pair in order, and ``{"kept": {"train": n, "val": n, "test": n}, "dropped": n}``.
    """
    roots = [math.sqrt(f) for f in _check_fractions(fractions)]
    total = sum(roots)
    weights = (roots[0] / total, roots[1] / total, 1.0 - roots[0] / total - roots[1] / total)
    weights = (weights[0], weights[1], max(0.0, weights[2]))
    proteins = sorted({p for pair in pairs for p in (pair.a, pair.b)})
    protein_split = dict(zip(proteins, random_split(len(proteins), weights, seed), strict=True))
    assigned: list[str | None] = []
    kept = dict.fromkeys(SPLITS, 0)
    dropped = 0
    for pair in pairs:
        split_a, split_b = protein_split[pair.a], protein_split[pair.b]
        if split_a == split_b:
            assigned.append(split_a)
            kept[split_a] += 1
        else:
            assigned.append(None)
            dropped += 1
    return assigned, {"kept": kept, "dropped": dropped}


def check_no_empty_splits(counts: dict[str, int], source: str | Path) -> None:
    """Raise an :class:`InputError` on ``source`` naming every one of train / val / test that has no examples."""
    empty = [name for name in SPLITS if counts.get(name, 0) == 0]
    if not empty:
        return
    problems = "; ".join(f"split '{name}' has no examples" for name in empty)
    raise InputError(
        source, None, f"{problems} (check the file's split column, or use more data or larger split fractions)"
    )
