"""PPI pair files in the D-SCRIPT layout (headerless ``id1 id2 label``) and the gold-standard layout (header
``p0 p1 label split``), and the check that every protein they name is in the FASTA file."""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from protpeft.data.fasta import raise_collected, read_input_text
from protpeft.data.tables import RowCheck, column_positions
from protpeft.errors import ConfigError, InputError

__all__ = ["PairRecord", "check_pairs_against_sequences", "detect_layout", "read_pairs"]

Layout = Literal["auto", "dscript", "gold"]

_ANY_SEPARATOR = re.compile(r"[\s,]+")


@dataclass(frozen=True)
class PairRecord:
    """One labelled protein pair; ``line`` is its 1-based line in the pairs file."""

    a: str
    b: str
    label: int
    split: str | None
    line: int


def _parse_label(raw: str) -> int | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    if math.isnan(value) or value not in (0.0, 1.0):
        return None
    return int(value)


def _label_problem(raw: str) -> str:
    return f"label '{raw}' must be 0 or 1" if raw else "label is empty (must be 0 or 1)"


def detect_layout(first_line: str) -> Literal["dscript", "gold"]:
    """``gold`` when the line has both ``p0`` and ``p1`` among its fields (a header), else ``dscript``."""
    fields = {f.strip().strip("\"'").lower() for f in _ANY_SEPARATOR.split(first_line.strip())}
    return "gold" if {"p0", "p1"} <= fields else "dscript"


def _split_dscript(line: str) -> list[str]:
    if "\t" in line:
        return [f.strip() for f in line.rstrip().split("\t")]
    return line.split()


@dataclass(frozen=True)
class _Columns:
    """Where a layout keeps a pair's fields, and how it names them in messages."""

    names: list[str]
    split_line: Callable[[str], list[str]]
    a: int = 0
    b: int = 1
    label: int = 2
    split: int | None = None
    id_names: tuple[str, str] = ("first protein id", "second protein id")


_DSCRIPT = _Columns(["protein", "protein", "label"], _split_dscript)
_GOLD_NEEDS = "the gold-standard layout needs columns p0, p1, label and optionally split"


def _gold_columns(path: str | Path, header_number: int, header_line: str) -> _Columns:
    delimiter = "\t" if "\t" in header_line else "," if "," in header_line else None

    def split_line(line: str) -> list[str]:
        if delimiter is None:
            return line.split()
        return [f.strip() for f in next(csv.reader([line.rstrip()], delimiter=delimiter))]

    names = [c.lower() for c in split_line(header_line)]
    at = column_positions(path, header_number, names, ("p0", "p1", "label"), _GOLD_NEEDS)
    ids = ("protein id in column 'p0'", "protein id in column 'p1'")
    return _Columns(names, split_line, at["p0"], at["p1"], at["label"], at.get("split"), ids)


def _pair(row: RowCheck, fields: list[str], columns: _Columns) -> PairRecord | None:
    """The pair on a row whose field count is right, or None after adding its problems to the row."""
    a, b = fields[columns.a], fields[columns.b]
    for name, value in zip(columns.id_names, (a, b), strict=True):
        if not value:
            row.problem(f"{name} is empty")
    raw_label = fields[columns.label]
    label = _parse_label(raw_label)
    if label is None:
        row.problem(_label_problem(raw_label))
    split = row.split(fields[columns.split] if columns.split is not None else None)
    return PairRecord(a, b, label, split, row.line) if row.ok and label is not None else None


def read_pairs(path: str | Path, layout: Layout = "auto") -> list[PairRecord]:
    """Read a pairs file.

    ``dscript``: no header, ``id1 id2 label`` separated by tabs (or any whitespace), labels 0/1 or 0.0/1.0.
    ``gold``: a header naming the columns ``p0 p1 label`` and optionally ``split`` (tab, comma or whitespace
    separated, any order). ``auto`` picks gold when the first line holds both ``p0`` and ``p1``. Blank lines are
    skipped; split names are normalised (training → train, dev/valid/validation → val, testing → test).

    Raises:
        InputError / InputErrors: every problem (field count, label, empty id, split name) with its line.
        ConfigError: ``layout`` is not one of auto, dscript, gold.
    """
    if layout not in ("auto", "dscript", "gold"):
        raise ConfigError(f"unknown pairs layout {layout!r} (expected auto, dscript or gold)")
    text = read_input_text(path)
    numbered = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not numbered:
        raise InputError(path, None, "file is empty")
    if layout == "auto":
        layout = detect_layout(numbered[0][1])
    if layout == "gold":
        columns, body = _gold_columns(path, *numbered[0]), numbered[1:]
    else:
        columns, body = _DSCRIPT, numbered

    errors: list[InputError] = []
    records: list[PairRecord] = []
    for number, line in body:
        row = RowCheck(path, number, errors)
        fields = columns.split_line(line)
        if row.has_fields(fields, columns.names) and (record := _pair(row, fields, columns)) is not None:
            records.append(record)
    raise_collected(errors)
    if not records:
        raise InputError(path, None, "file has no pairs (only a header)")
    return records


def check_pairs_against_sequences(
    pairs: list[PairRecord], sequences: dict[str, str], pairs_path: str | Path, fasta_path: str | Path
) -> None:
    """Raise one :class:`InputError` per protein id of ``pairs`` that ``sequences`` lacks, at the pair's line."""
    errors: list[InputError] = []
    for pair in pairs:
        for protein in (pair.a,) if pair.a == pair.b else (pair.a, pair.b):
            if protein not in sequences:
                errors.append(InputError(pairs_path, pair.line, f"protein '{protein}' is not in {fasta_path}"))
    raise_collected(errors)
