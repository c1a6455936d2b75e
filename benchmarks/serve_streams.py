"""Request streams of the serving benchmark: which pair each request carries, and to which served model it goes.

- ``random``: every request new — proteins of 250–350 random residues (uniform letters), drawn fresh for each
  request, so no protein recurs and no cache can help: the cost of encoding every protein.
- ``ecoli``: the D-SCRIPT E. coli test pairs (``../shared/data/ppi-dscript/ecoli_test.tsv``, 22,000 pairs of 7,138
  proteins, 287 residues on average) in file order, as a user screening a proteome sends them: proteins recur (a
  protein seen before is already embedded).

Both hand out pairs in one global order shared by the client threads; request ``i`` goes to model ``i mod M`` of the
``M`` models of a phase (8 adapters: each request to the next adapter).
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

from benchmarks.common import SHARED_DATA

__all__ = ["STREAMS", "PairStream", "ecoli_pairs", "stream_skip_reason"]

AMINO = "ACDEFGHIKLMNPQRSTVWY"
STREAMS = ("random", "ecoli")


def random_protein(rng: random.Random) -> str:
    return "".join(rng.choices(AMINO, k=rng.randint(250, 350)))


def ecoli_pairs(data_dir: Path = SHARED_DATA) -> list[tuple[str, str]]:
    """The E. coli test pairs as sequences, in file order."""
    from protpeft.data.fasta import read_fasta

    sequences = read_fasta(data_dir / "ecoli.fasta")
    pairs = []
    for line in (data_dir / "ecoli_test.tsv").read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[0] in sequences and fields[1] in sequences:
            pairs.append((sequences[fields[0]], sequences[fields[1]]))
    return pairs


def stream_skip_reason(name: str) -> str | None:
    """Why a stream cannot run here (None: it can)."""
    if name == "ecoli" and not (SHARED_DATA / "ecoli_test.tsv").is_file():
        return f"E. coli stream skipped: D-SCRIPT data not found at {SHARED_DATA} (../shared beside the checkout)"
    return None


class PairStream:
    """Thread-safe: :meth:`take` hands out the next request's (index, pairs) of the stream."""

    def __init__(self, name: str, per_request: int, seed: int = 0, pairs: list[tuple[str, str]] | None = None):
        if name not in STREAMS:
            raise ValueError(f"unknown stream {name!r}; known: {', '.join(STREAMS)}")
        self.name, self.per_request = name, per_request
        self._rng = random.Random(seed)
        self._pairs = pairs if pairs is not None or name == "random" else ecoli_pairs()
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> tuple[int, list[tuple[str, str]]]:
        with self._lock:
            index = self._next
            self._next += 1
            if self.name == "random":
                return index, [(random_protein(self._rng), random_protein(self._rng)) for _ in range(self.per_request)]
            start = index * self.per_request
            return index, [self._pairs[(start + k) % len(self._pairs)] for k in range(self.per_request)]
