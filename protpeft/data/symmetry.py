"""Symmetry tables: a sequence per row with its symmetry codes (C2, D4, H, ...) mapped onto 18 classes."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from protpeft.data.alphabet import bad_letter_problem, count_bad_letters, first_bad_letter, normalize_sequence
from protpeft.data.fasta import raise_collected, read_input_text
from protpeft.data.tables import RowCheck, column_positions
from protpeft.errors import InputError

__all__ = ["SYMMETRY_CLASSES", "SequenceRecord", "multi_hot", "read_symmetry_table", "symmetry_class"]

SYMMETRY_CLASSES: tuple[str, ...] = (
    "C1",
    "C2",
    "C3",
    "C4",
    "C5",
    "C6",
    "C7-C9",
    "C10-C17",
    "D2",
    "D3",
    "D4",
    "D5",
    "D6-D12",
    "H",
    "O",
    "T",
    "I",
    "other",
)
_CLASS_INDEX = {name: i for i, name in enumerate(SYMMETRY_CLASSES)}
_CODE = re.compile(r"([CD])(\d+)")
_LABEL_SEPARATORS = re.compile(r"[\s,;]+")
CODE_EXPECTED = "expected C<n>, D<n>, H, O, T, I or other"
_NEEDS = "a symmetry table needs columns sequence and label, optionally id and split"


def symmetry_class(code: str) -> str | None:
    """The class of a symmetry code: ``C8`` → ``C7-C9``, ``D9`` → ``D6-D12``, ``C20`` → ``other``; None if invalid.

    Cyclic C1..C6 and dihedral D2..D5 are classes of their own; C7-C9, C10-C17 and D6-D12 are grouped; C18+ and
    D13+ are ``other``; H, O, T, I and ``other`` map to themselves. C0, D0, D1 and anything else are invalid.
    """
    text = code.strip()
    if text.lower() == "other":
        return "other"
    text = text.upper()
    if text in ("H", "O", "T", "I"):
        return text
    match = _CODE.fullmatch(text)
    if match is None:
        return None
    letter, n = match.group(1), int(match.group(2))
    if letter == "C":
        if n < 1:
            return None
        if n <= 6:
            return f"C{n}"
        if n <= 9:
            return "C7-C9"
        return "C10-C17" if n <= 17 else "other"
    if n < 2:
        return None
    if n <= 5:
        return f"D{n}"
    return "D6-D12" if n <= 12 else "other"


@dataclass(frozen=True)
class SequenceRecord:
    """One row of a symmetry table: ``labels`` are class names in :data:`SYMMETRY_CLASSES` order, no repeats."""

    id: str
    sequence: str
    labels: tuple[str, ...]
    split: str | None
    line: int


def multi_hot(labels: tuple[str, ...]) -> list[float]:
    """An 18-long 0/1 vector over :data:`SYMMETRY_CLASSES` with a 1 for each class in ``labels``."""
    vector = [0.0] * len(SYMMETRY_CLASSES)
    for name in labels:
        vector[_CLASS_INDEX[name]] = 1.0
    return vector


def read_symmetry_table(path: str | Path) -> list[SequenceRecord]:
    """Read a symmetry table: TSV when the header line holds a tab, else CSV (quoted fields allowed).

    Columns: ``sequence`` and ``label`` (space-separated codes; commas or semicolons also separate) are required,
    ``split`` and ``id`` are optional (default id ``seq<line>``). Sequences are normalised (uppercase, whitespace
    and one trailing ``*`` removed).

    Raises:
        InputError / InputErrors: every problem (missing column, empty or invalid sequence, empty label, invalid
        code, bad split name, an id repeated with another sequence), each with its line.
    """
    text = read_input_text(path)
    if not text.strip():
        raise InputError(path, None, "file is empty")
    header_text = next(line for line in text.splitlines() if line.strip())
    delimiter = "\t" if "\t" in header_text else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)

    header: list[str] = []
    header_line = 1
    end = 0
    for row in reader:
        start, end = end + 1, reader.line_num
        if any(field.strip() for field in row):
            header, header_line = [c.strip().lower() for c in row], start
            break
    at = column_positions(path, header_line, header, ("sequence", "label"), _NEEDS)
    i_seq, i_label, i_split, i_id = at["sequence"], at["label"], at.get("split"), at.get("id")

    errors: list[InputError] = []
    records: list[SequenceRecord] = []
    first_seen: dict[str, tuple[int, str]] = {}
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if not any(field.strip() for field in row):
                continue
            check = RowCheck(path, start, errors)
            if not check.has_fields(row, header):
                continue
            seq_id = row[i_id].strip() if i_id is not None else ""
            seq_id = seq_id or f"seq{start}"

            sequence = normalize_sequence(row[i_seq])
            if not sequence:
                check.problem(f"sequence '{seq_id}' is empty")
            else:
                bad = first_bad_letter(sequence)
                if bad is not None:
                    check.problem(bad_letter_problem(seq_id, bad[0], bad[1], count_bad_letters(sequence) - 1))

            codes = [c for c in _LABEL_SEPARATORS.split(row[i_label]) if c]
            classes: set[str] = set()
            if not codes:
                check.problem(f"label of sequence '{seq_id}' is empty ({CODE_EXPECTED})")
            for code in codes:
                name = symmetry_class(code)
                if name is None:
                    check.problem(f"label '{code}' is not a symmetry code ({CODE_EXPECTED})")
                else:
                    classes.add(name)

            split = check.split(row[i_split] if i_split is not None else None)

            if check.ok and i_id is not None and row[i_id].strip():
                if seq_id in first_seen:
                    seen_line, seen_sequence = first_seen[seq_id]
                    if seen_sequence != sequence:
                        check.problem(f"id '{seq_id}' appears again (line {seen_line}) with a different sequence")
                else:
                    first_seen[seq_id] = (start, sequence)
            if check.ok:
                labels = tuple(name for name in SYMMETRY_CLASSES if name in classes)
                records.append(SequenceRecord(seq_id, sequence, labels, split, start))
    except csv.Error as err:
        errors.append(InputError(path, reader.line_num, f"cannot parse the line as {_format(delimiter)} ({err})"))

    raise_collected(errors)
    if not records:
        raise InputError(path, None, "file has no rows (only a header)")
    return records


def _format(delimiter: str) -> str:
    return "TSV" if delimiter == "\t" else "CSV"
