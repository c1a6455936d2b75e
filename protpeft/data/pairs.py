"""PPI pair files in the D-SCRIPT layout (headerless ``id1 id2 label``) and the gold-standard layout (header
``p0 p1 label split``), and the check that every protein they name is in the FASTA file."""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from protpeft.data.fasta import raise_collected, read_input_text
from protpeft.data.splits import normalize_split_name, split_problem
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
        return [f.strip() for f in line.split("\t")]
    return line.split()


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
    text = read_input_text(path)
    lines = text.splitlines()
    numbered = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise InputError(path, None, "file is empty")
    if layout == "auto":
        layout = detect_layout(numbered[0][1])
    errors: list[InputError] = []
    records: list[PairRecord] = []

    if layout == "dscript":
        for number, line in numbered:
            fields = _split_dscript(line.rstrip())
            if len(fields) != 3:
                errors.append(
                    InputError(path, number, f"expected 3 fields (protein, protein, label), found {len(fields)}")
                )
                continue
            a, b, raw_label = fields
            ok = True
            for column, value in (("first", a), ("second", b)):
                if not value:
                    errors.append(InputError(path, number, f"{column} protein id is empty"))
                    ok = False
            label = _parse_label(raw_label)
            if label is None:
                errors.append(InputError(path, number, _label_problem(raw_label)))
                ok = False
            if ok:
                records.append(PairRecord(a, b, label, None, number))
    elif layout == "gold":
        header_number, header_line = numbered[0]
        delimiter = "\t" if "\t" in header_line else "," if "," in header_line else None

        def split_fields(line: str) -> list[str]:
            if delimiter is None:
                return line.split()
            return [f.strip() for f in next(csv.reader([line.rstrip()], delimiter=delimiter))]

        columns = [c.lower() for c in split_fields(header_line)]
        missing = [c for c in ("p0", "p1", "label") if c not in columns]
        if missing:
            names = ", ".join(f"'{c}'" for c in missing)
            raise InputError(
                path,
                header_number,
                f"header has no {names} column{'s' if len(missing) > 1 else ''} "
                f"(the gold-standard layout needs columns p0, p1, label and optionally split; found {columns})",
            )
        i_a, i_b, i_label = columns.index("p0"), columns.index("p1"), columns.index("label")
        i_split = columns.index("split") if "split" in columns else None
        for number, line in numbered[1:]:
            fields = split_fields(line)
            if len(fields) != len(columns):
                errors.append(
                    InputError(
                        path, number, f"expected {len(columns)} fields ({', '.join(columns)}), found {len(fields)}"
                    )
                )
                continue
            a, b, raw_label = fields[i_a], fields[i_b], fields[i_label]
            ok = True
            for column, value in (("p0", a), ("p1", b)):
                if not value:
                    errors.append(InputError(path, number, f"protein id in column '{column}' is empty"))
                    ok = False
            label = _parse_label(raw_label)
            if label is None:
                errors.append(InputError(path, number, _label_problem(raw_label)))
                ok = False
            split = None
            if i_split is not None:
                split = normalize_split_name(fields[i_split])
                if split is None:
                    errors.append(InputError(path, number, split_problem(fields[i_split])))
                    ok = False
            if ok:
                records.append(PairRecord(a, b, label, split, number))
    else:
        raise ConfigError(f"unknown pairs layout {layout!r} (expected auto, dscript or gold)")

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
