"""From the data config to train/val/test examples: read, validate, split, describe.

An :class:`Example` names its member sequences by id (two for PPI, one for symmetry) and carries its target
vector, so every later stage — tokenised batches or cached embeddings — is the same for both tasks.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from protpeft.config import DataConfig
from protpeft.errors import InputError
from protpeft.tasks import TASKS, TaskSpec

__all__ = [
    "SPLIT_NAMES",
    "Example",
    "TaskData",
    "TaskFiles",
    "file_fingerprint",
    "load_task_data",
    "read_ppi_files",
    "read_symmetry_files",
]

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Example:
    members: tuple[str, ...]
    target: tuple[float, ...]


@dataclass
class TaskData:
    task: str
    label_names: tuple[str, ...]
    sequences: dict[str, str]
    splits: dict[str, list[Example]]
    fingerprint: str
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {name: len(examples) for name, examples in self.splits.items()}

    def positive_rate(self, split: str) -> float:
        examples = self.splits[split]
        if not examples:
            return 0.0
        return sum(sum(e.target) for e in examples) / (len(examples) * len(examples[0].target))


def file_fingerprint(paths: list[Path]) -> str:
    """sha256 over the bytes of the input files (the dataset's identity for tracking)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


@dataclass
class TaskFiles:
    """What a task's reader (its :data:`~protpeft.tasks.TASKS` row's ``read``) returns."""

    records: list
    """The file's records, in file order (each has ``line``; pairs also ``a`` and ``b``)."""
    examples: list[Example]
    """One per record, in the same order."""
    sequences: dict[str, str]
    column_splits: list[str | None]
    """Each record's value in the file's split column (None: no value)."""
    inputs: list[Path]
    """The files read, the main one first (for the dataset fingerprint and messages)."""


def _require(path: Path | None, key: str, task: str) -> Path:
    if path is None:
        raise InputError(f"data.{key}", None, f"task {task} needs data.{key} (set it in the config or with --set)")
    if not Path(path).is_file():
        raise InputError(path, None, "file not found")
    return Path(path)


def read_ppi_files(cfg: DataConfig) -> TaskFiles:
    """PPI: the pairs file (either layout) and the FASTA of every sequence it names."""
    from protpeft.data.fasta import read_fasta
    from protpeft.data.pairs import check_pairs_against_sequences, read_pairs

    pairs_path = _require(cfg.pairs, "pairs", "ppi")
    fasta_path = _require(cfg.sequences, "sequences", "ppi")
    sequences = read_fasta(fasta_path)
    records = read_pairs(pairs_path, cfg.layout)
    check_pairs_against_sequences(records, sequences, pairs_path, fasta_path)
    examples = [Example((r.a, r.b), (float(r.label),)) for r in records]
    return TaskFiles(records, examples, sequences, [r.split for r in records], [pairs_path, fasta_path])


def read_symmetry_files(cfg: DataConfig) -> TaskFiles:
    """Symmetry: one table of sequences and their space-separated class codes."""
    from protpeft.data.symmetry import multi_hot, read_symmetry_table

    table_path = _require(cfg.table, "table", "symmetry")
    records = read_symmetry_table(table_path)
    sequences = {r.id: r.sequence for r in records}
    examples = [Example((r.id,), tuple(multi_hot(r.labels))) for r in records]
    return TaskFiles(records, examples, sequences, [r.split for r in records], [table_path])


def _split_names(files: TaskFiles, cfg: DataConfig, task: TaskSpec) -> tuple[list[str | None], list[str]]:
    """Per-record split names from the file's column or a seeded split, plus notes on what was done."""
    from protpeft.data.splits import random_split, split_pairs_by_protein

    records, column_splits, source = files.records, files.column_splits, files.inputs[0]
    method = cfg.split.method
    has_column = any(s is not None for s in column_splits)
    if method == "auto":
        method = "column" if has_column else ("by_protein" if task.split_by_protein else "random")
    if method == "column":
        missing = [r.line for r, s in zip(records, column_splits, strict=True) if s is None]
        if missing:
            raise InputError(source, missing[0], "no split value (split.method is 'column'); add a split column")
        return column_splits, ["splits from the file's split column"]
    if method == "random":
        return list(random_split(len(records), cfg.split.fractions, cfg.split.seed)), ["seeded random split"]
    if not task.split_by_protein:
        raise InputError(source, None, "split.method by_protein applies to PPI pairs only")
    names, stats = split_pairs_by_protein(records, cfg.split.fractions, cfg.split.seed)
    note = (
        f"split by protein: kept {stats['kept']}, dropped {stats['dropped']} pairs whose proteins fell in two splits"
    )
    return names, [note]


def load_task_data(task: str, cfg: DataConfig) -> TaskData:
    """Read and validate the task's files (its :data:`~protpeft.tasks.TASKS` row's reader) and return its splits.

    Raises:
        InputError / InputErrors: naming the file, line and problem.
    """
    from protpeft.data.splits import check_no_empty_splits

    spec = TASKS[task]
    files = spec.read(cfg)
    names, notes = _split_names(files, cfg, spec)
    splits: dict[str, list[Example]] = {name: [] for name in SPLIT_NAMES}
    for example, name in zip(files.examples, names, strict=True):
        if name is not None:
            splits[name].append(example)
    check_no_empty_splits({k: len(v) for k, v in splits.items()}, str(files.inputs[0]))
    if cfg.max_examples is not None and len(splits["train"]) > cfg.max_examples:
        splits["train"] = random.Random(cfg.split.seed).sample(splits["train"], cfg.max_examples)
        notes.append(f"training set subsampled to {cfg.max_examples} examples")
    used = {m for exs in splits.values() for e in exs for m in e.members}
    sequences = {k: v for k, v in files.sequences.items() if k in used}
    return TaskData(task, spec.label_names, sequences, splits, file_fingerprint(files.inputs), notes)
