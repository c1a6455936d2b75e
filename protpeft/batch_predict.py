"""Offline prediction from files to a TSV: pairs (PPI) or single sequences (symmetry)."""

from __future__ import annotations

import csv
from pathlib import Path

from protpeft.errors import ProtpeftError
from protpeft.predict import Predictor

__all__ = ["predict_files", "read_prediction_inputs", "write_predictions"]


def read_prediction_inputs(
    task: str, pairs: Path | None, sequences: Path | None, fasta: Path | None
) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]], list[float | None]]:
    """(ids per example, sequences per example, known labels or None) read through the validating readers."""
    from protpeft.data.fasta import read_fasta

    if task == "ppi":
        if pairs is None or sequences is None:
            raise ProtpeftError("a PPI model needs --pairs and --sequences")
        from protpeft.data.pairs import check_pairs_against_sequences, read_pairs

        seqs = read_fasta(sequences)
        records = read_pairs(pairs)
        check_pairs_against_sequences(records, seqs, pairs, sequences)
        ids = [(r.a, r.b) for r in records]
        return ids, [(seqs[r.a], seqs[r.b]) for r in records], [float(r.label) for r in records]
    source = fasta or sequences
    if source is None:
        raise ProtpeftError("a symmetry model needs --input sequences.fasta")
    seqs = read_fasta(source)
    return [(k,) for k in seqs], [(v,) for v in seqs.values()], [None] * len(seqs)


def write_predictions(path: Path, predictor: Predictor, ids, probs, labels) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        if predictor.task == "ppi":
            writer.writerow(["p0", "p1", "probability", "prediction", "label"])
            for (a, b), p, pred, label in zip(ids, probs, predictor.labels(probs), labels, strict=True):
                writer.writerow([a, b, f"{p:.6f}", pred, "" if label is None else int(label)])
        else:
            writer.writerow(["id", *[f"p_{n}" for n in predictor.label_names], "labels"])
            for (sid,), row, names in zip(ids, probs, predictor.labels(probs), strict=True):
                writer.writerow([sid, *[f"{p:.6f}" for p in row], " ".join(names)])
    tmp.replace(path)


def predict_files(
    predictor: Predictor,
    out: Path,
    pairs: Path | None = None,
    sequences: Path | None = None,
    fasta: Path | None = None,
    batch_size: int = 16,
) -> int:
    ids, seqs, labels = read_prediction_inputs(predictor.task, pairs, sequences, fasta)
    if predictor.task == "ppi":
        probs = predictor.predict(pairs=seqs, batch_size=batch_size)
    else:
        probs = predictor.predict(sequences=[s[0] for s in seqs], batch_size=batch_size)
    write_predictions(out, predictor, ids, probs, labels)
    return len(ids)
