"""Offline prediction from files to a TSV: pairs (PPI) or single sequences (symmetry), with a progress bar.

(Across a Ray cluster: :mod:`protpeft.deploy.batch`, which reuses these readers, writer and chunked prediction.)
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from protpeft.errors import ProtpeftError
from protpeft.predict import Predictor
from protpeft.tasks import TASKS

__all__ = [
    "pair_rows",
    "predict_examples",
    "predict_files",
    "progress_bar",
    "read_pair_inputs",
    "read_prediction_inputs",
    "read_sequence_inputs",
    "sequence_rows",
    "write_predictions",
]

CHUNK_BATCHES = 8
"""Batches per progress step: small enough to move the bar, large enough to keep length-sorted batches full."""


@contextmanager
def progress_bar(total: int, description: str, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A Rich progress bar on stderr (stdout stays for results); yields ``advance(n)``. Disabled: a no-op."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def predict_examples(
    predictor: Predictor, examples: Sequence[tuple[str, ...]], batch_size: int = 16, progress: bool = False
) -> np.ndarray:
    """Probabilities for examples (tuples of member sequences: pairs for PPI, 1-tuples for symmetry), predicted in
    length-sorted chunks so that a progress bar can follow; order kept."""

    def run(part: Sequence[tuple[str, ...]]) -> np.ndarray:
        return predictor.predict_examples(part, batch_size=batch_size)

    if not examples:
        return run(examples)
    order = sorted(range(len(examples)), key=lambda i: max(len(s) for s in examples[i]))
    chunk = batch_size * CHUNK_BATCHES
    out: np.ndarray | None = None
    with progress_bar(len(examples), "predicting", enabled=progress) as advance:
        for start in range(0, len(order), chunk):
            idx = order[start : start + chunk]
            probs = run([examples[i] for i in idx])
            if out is None:
                out = np.empty((len(examples), *probs.shape[1:]), dtype=probs.dtype)
            out[idx] = probs
            advance(len(idx))
    return out


def read_prediction_inputs(
    task: str, pairs: Path | None, sequences: Path | None, fasta: Path | None
) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]], list[float | None]]:
    """(ids per example, sequences per example, known labels or None) read through the validating readers of
    ``task`` (its :data:`~protpeft.tasks.TASKS` row's ``read_prediction_inputs``)."""
    return TASKS[task].read_prediction_inputs(pairs, sequences, fasta)


def read_pair_inputs(pairs: Path | None, sequences: Path | None, fasta: Path | None):
    """PPI: a pairs file (its labels, when present, are kept for the TSV) and the FASTA it names."""
    from protpeft.data.fasta import read_fasta
    from protpeft.data.pairs import check_pairs_against_sequences, read_pairs

    if pairs is None or sequences is None:
        raise ProtpeftError("a PPI model needs --pairs and --sequences")
    seqs = read_fasta(sequences)
    records = read_pairs(pairs)
    check_pairs_against_sequences(records, seqs, pairs, sequences)
    ids = [(r.a, r.b) for r in records]
    return ids, [(seqs[r.a], seqs[r.b]) for r in records], [float(r.label) for r in records]


def read_sequence_inputs(pairs: Path | None, sequences: Path | None, fasta: Path | None):
    """Symmetry: the sequences of a FASTA file."""
    from protpeft.data.fasta import read_fasta

    source = fasta or sequences
    if source is None:
        raise ProtpeftError("a symmetry model needs --input sequences.fasta")
    seqs = read_fasta(source)
    return [(k,) for k in seqs], [(v,) for v in seqs.values()], [None] * len(seqs)


def pair_rows(label_names: Sequence[str], ids, probs, predicted, labels) -> tuple[list[str], Iterator[list]]:
    """PPI's TSV: both ids, the probability, the 0/1 prediction and the known label (blank when unknown)."""
    rows = (
        [a, b, f"{p:.6f}", pred, "" if label is None else int(label)]
        for (a, b), p, pred, label in zip(ids, probs, predicted, labels, strict=True)
    )
    return ["p0", "p1", "probability", "prediction", "label"], rows


def sequence_rows(label_names: Sequence[str], ids, probs, predicted, labels) -> tuple[list[str], Iterator[list]]:
    """Symmetry's TSV: the id, one probability per class and the predicted class names."""
    rows = (
        [sid, *[f"{p:.6f}" for p in row], " ".join(names)]
        for (sid,), row, names in zip(ids, probs, predicted, strict=True)
    )
    return ["id", *[f"p_{n}" for n in label_names], "labels"], rows


def write_predictions(path: Path, predictor: Predictor, ids, probs, labels) -> None:
    """The predictions TSV (written through a temporary file), in the task's row layout."""
    predicted = predictor.labels(probs)
    header, rows = TASKS[predictor.task].prediction_rows(predictor.label_names, ids, probs, predicted, labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    tmp.replace(path)


def predict_files(
    predictor: Predictor,
    out: Path,
    pairs: Path | None = None,
    sequences: Path | None = None,
    fasta: Path | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> int:
    ids, seqs, labels = read_prediction_inputs(predictor.task, pairs, sequences, fasta)
    probs = predict_examples(predictor, seqs, batch_size, progress=progress)
    write_predictions(out, predictor, ids, probs, labels)
    return len(ids)
