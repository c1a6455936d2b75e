"""``protpeft data check``: read and validate inputs exactly as training would, and summarise them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from protpeft.errors import ProtpeftError

__all__ = ["check_inputs"]


def check_inputs(
    pairs: Path | None = None, sequences: Path | None = None, table: Path | None = None, layout: str = "auto"
) -> dict[str, Any]:
    """Validate PPI pairs + FASTA, or a symmetry table. Raises InputError(s) naming file and line."""
    if table is not None:
        from protpeft.data.symmetry import read_symmetry_table

        records = read_symmetry_table(table)
        labels = Counter(label for r in records for label in r.labels)
        return {
            "table": str(table),
            "sequences": len(records),
            "splits": dict(Counter(r.split or "(none)" for r in records)),
            "labels": dict(labels),
            "multi_label_rows": sum(len(r.labels) > 1 for r in records),
        }
    if pairs is None or sequences is None:
        raise ProtpeftError("give --pairs and --sequences (PPI) or --table (symmetry)")
    from protpeft.data.fasta import read_fasta
    from protpeft.data.pairs import check_pairs_against_sequences, read_pairs

    seqs = read_fasta(sequences)
    records = read_pairs(pairs, layout)  # type: ignore[arg-type]
    check_pairs_against_sequences(records, seqs, pairs, sequences)
    lengths = sorted(len(s) for s in seqs.values())
    return {
        "pairs": len(records),
        "positives": sum(r.label for r in records),
        "proteins_in_pairs": len({p for r in records for p in (r.a, r.b)}),
        "sequences": len(seqs),
        "length_min_median_max": [lengths[0], lengths[len(lengths) // 2], lengths[-1]],
        "splits": dict(Counter(r.split or "(none)" for r in records)),
    }
