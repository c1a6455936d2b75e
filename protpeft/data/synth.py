"""Small synthetic data sets in the real file formats, learnable from residue composition alone.

Used by the demo and the tests: a randomly initialised transformer with mean pooling and a small head can learn
them, so a run on CPU shows a falling loss and a rising metric within minutes.

PPI: each protein belongs to one of four families, each enriched (~35% of residues) in its own three letters;
a pair interacts iff its families are {0, 1} or {2, 3}. Splits are drawn by protein, so no protein is in two
splits. Symmetry: each class in use has its own enriched letters; a sequence carries one or two classes.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

from protpeft.data.splits import SPLITS, random_split, split_counts
from protpeft.errors import ConfigError

__all__ = ["PPI_FAMILY_LETTERS", "SYMMETRY_CLASS_LETTERS", "write_synthetic"]

PPI_FAMILY_LETTERS = ("KRH", "DEN", "FWY", "CMP")
"""Letters family k is enriched in (disjoint sets)."""
PPI_POSITIVE_FAMILIES = ({0, 1}, {2, 3})
"""A pair interacts iff its two families form one of these sets."""
_PPI_COMMON = "".join(c for c in "ACDEFGHIKLMNPQRSTVWY" if not any(c in s for s in PPI_FAMILY_LETTERS))

SYMMETRY_CLASS_LETTERS = {"C1": "KR", "C2": "DE", "C3": "FW", "C7-C9": "HY", "D2": "NQ", "T": "CM"}
"""Classes the synthetic symmetry table uses, with the letters each is enriched in (disjoint sets)."""
_SYMMETRY_WEIGHTS = {"C1": 0.3, "C2": 0.2, "C3": 0.15, "C7-C9": 0.1, "D2": 0.15, "T": 0.1}
_SYMMETRY_CODES = {"C7-C9": ("C7", "C8", "C9")}
"""Codes written for a class (exercising the code → class mapping); other classes are written as their name."""
_SYMMETRY_COMMON = "".join(
    c for c in "ACDEFGHIKLMNPQRSTVWY" if not any(c in s for s in SYMMETRY_CLASS_LETTERS.values())
)

ENRICHMENT = 0.35
"""Share of a sequence's residues drawn from its enriched letters."""
MIN_LENGTH, MAX_LENGTH = 30, 120
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)


def _sequence(rng: random.Random, enriched: list[str], common: str, share: float) -> str:
    """A random sequence whose residues come from ``enriched`` sets (``share`` in all, evenly) or ``common``."""
    length = rng.randint(MIN_LENGTH, MAX_LENGTH)
    residues = []
    for _ in range(length):
        if enriched and rng.random() < share:
            residues.append(rng.choice(enriched[rng.randrange(len(enriched))]))
        else:
            residues.append(rng.choice(common))
    return "".join(residues)


def _write_fasta(path: Path, sequences: dict[str, str], width: int = 60) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for seq_id, seq in sequences.items():
            handle.write(f">{seq_id}\n")
            for i in range(0, len(seq), width):
                handle.write(seq[i : i + width] + "\n")


def _write_ppi(out_dir: Path, n: int, rng: random.Random) -> dict[str, Path]:
    positive_combos = [tuple(sorted(s)) for s in PPI_POSITIVE_FAMILIES]
    negative_combos = [(i, j) for i in range(4) for j in range(i, 4) if {i, j} not in PPI_POSITIVE_FAMILIES]
    sequences: dict[str, str] = {}
    rows: list[tuple[str, str, int, str]] = []
    counts = split_counts(n, SPLIT_FRACTIONS)
    for split in SPLITS:
        n_pairs = counts[split]
        per_family = max(6, min(40, round(n_pairs / 5)))
        members: list[list[str]] = []
        for family in range(4):
            ids = []
            for _ in range(per_family):
                seq_id = f"P{len(sequences) + 1:05d}"
                sequences[seq_id] = _sequence(rng, [PPI_FAMILY_LETTERS[family]], _PPI_COMMON, ENRICHMENT)
                ids.append(seq_id)
            members.append(ids)
        n_positive = n_pairs // 2
        seen: set[frozenset[str]] = set()
        for k in range(n_pairs):
            label = 1 if k < n_positive else 0
            combos = positive_combos if label else negative_combos
            for _attempt in range(1000):
                fam_a, fam_b = rng.choice(combos)
                if rng.random() < 0.5:
                    fam_a, fam_b = fam_b, fam_a
                a, b = rng.choice(members[fam_a]), rng.choice(members[fam_b])
                key = frozenset((a, b))
                if a != b and key not in seen:
                    break
            else:
                raise ConfigError(f"cannot draw {n_pairs} distinct pairs for split {split!r}; use a smaller n")
            seen.add(key)
            rows.append((a, b, label, split))
    rng.shuffle(rows)

    paths = {"sequences": out_dir / "sequences.fasta", "pairs": out_dir / "pairs.tsv"}
    _write_fasta(paths["sequences"], sequences)
    with open(paths["pairs"], "w", encoding="utf-8", newline="\n") as handle:
        handle.write("p0\tp1\tlabel\tsplit\n")
        for a, b, label, split in rows:
            handle.write(f"{a}\t{b}\t{label}\t{split}\n")
    return paths


def _write_symmetry(out_dir: Path, n: int, rng: random.Random, seed: int) -> dict[str, Path]:
    classes = list(_SYMMETRY_WEIGHTS)
    weights = [_SYMMETRY_WEIGHTS[c] for c in classes]
    splits = random_split(n, SPLIT_FRACTIONS, seed)
    path = out_dir / "symmetry.tsv"
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("id\tsequence\tlabel\tsplit\n")
        for i in range(n):
            chosen = [rng.choices(classes, weights)[0]]
            if rng.random() < 0.2:
                others = [c for c in classes if c != chosen[0]]
                chosen.append(rng.choices(others, [_SYMMETRY_WEIGHTS[c] for c in others])[0])
            share = ENRICHMENT if len(chosen) == 1 else 0.5
            seq = _sequence(rng, [SYMMETRY_CLASS_LETTERS[c] for c in chosen], _SYMMETRY_COMMON, share)
            codes = [rng.choice(_SYMMETRY_CODES.get(c, (c,))) for c in chosen]
            handle.write(f"S{i + 1:05d}\t{seq}\t{' '.join(codes)}\t{splits[i]}\n")
    return {"table": path}


def write_synthetic(
    task: Literal["ppi", "symmetry"], out_dir: str | Path, n: int | None = None, seed: int = 0
) -> dict[str, Path]:
    """Write a synthetic data set for ``task`` into ``out_dir`` and return the paths written.

    ``ppi``: ``sequences.fasta`` and ``pairs.tsv`` (gold layout, header ``p0 p1 label split``, split by protein
    70/15/15, half positive in every split); keys ``sequences`` and ``pairs``; default 1200 pairs.
    ``symmetry``: ``symmetry.tsv`` (``id sequence label split``, random 70/15/15); key ``table``; default 600 rows.
    The same seed writes byte-identical files.

    Raises:
        ConfigError: an unknown task, or ``n`` too small (every split needs examples) or too large to draw.
    """
    if task not in ("ppi", "symmetry"):
        raise ConfigError(f"unknown task {task!r} (expected ppi or symmetry)")
    n = n if n is not None else (1200 if task == "ppi" else 600)
    minimum = 20
    if n < minimum:
        raise ConfigError(f"n must be at least {minimum} so every split has examples, got {n}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    if task == "ppi":
        return _write_ppi(out, n, rng)
    return _write_symmetry(out, n, rng, seed)
