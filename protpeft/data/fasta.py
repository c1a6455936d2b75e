"""FASTA reader: every problem in the file is reported at once, each with its line number."""

from __future__ import annotations

from pathlib import Path

from protpeft.data.alphabet import bad_letter_problem, count_bad_letters, first_bad_letter
from protpeft.errors import InputError, InputErrors

__all__ = ["raise_collected", "read_fasta", "read_input_text"]


def read_input_text(path: str | Path) -> str:
    """Read a UTF-8 text input file (a BOM is ignored); unreadable files become an :class:`InputError`."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return handle.read()
    except FileNotFoundError:
        raise InputError(path, None, "file not found") from None
    except IsADirectoryError:
        raise InputError(path, None, "is a directory, not a file") from None
    except UnicodeDecodeError as err:
        raise InputError(path, None, f"is not a UTF-8 text file (byte {err.start + 1} cannot be decoded)") from None
    except OSError as err:
        raise InputError(path, None, f"cannot be read ({err.strerror or err})") from None


def raise_collected(errors: list[InputError]) -> None:
    """Raise the one error, or all of them together as :class:`InputErrors`; do nothing when there are none."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise InputErrors(errors)


class _Record:
    __slots__ = ("id", "header_line", "chunks", "chunk_lines")

    def __init__(self, seq_id: str | None, header_line: int) -> None:
        self.id = seq_id
        self.header_line = header_line
        self.chunks: list[str] = []
        self.chunk_lines: list[int] = []


def read_fasta(path: str | Path) -> dict[str, str]:
    """Read a FASTA file into ``{id: sequence}``.

    The id is the first whitespace-delimited token after ``>``; sequence lines are joined, uppercased, and one
    trailing ``*`` is dropped. The same id twice with the same sequence is accepted.

    Raises:
        InputError / InputErrors: every problem in the file (text before the first header, a header without id,
        an empty sequence, a character that is not an amino-acid letter, an id repeated with another sequence).
    """
    text = read_input_text(path)
    if not text.strip():
        raise InputError(path, None, "file is empty")

    errors: list[InputError] = []
    sequences: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    record: _Record | None = None
    reported_preamble = False

    def finish(rec: _Record) -> None:
        seq = "".join(rec.chunks).upper()
        if seq.endswith("*"):
            seq = seq[:-1]
        name = rec.id if rec.id is not None else "(no id)"
        if not seq:
            errors.append(InputError(path, rec.header_line, f"sequence '{name}' is empty"))
            return
        bad = first_bad_letter(seq)
        if bad is not None:
            position, letter = bad
            line, offset = rec.header_line, 0
            for chunk, chunk_line in zip(rec.chunks, rec.chunk_lines, strict=True):
                if position <= offset + len(chunk):
                    line = chunk_line
                    break
                offset += len(chunk)
            more = count_bad_letters(seq) - 1
            errors.append(InputError(path, line, bad_letter_problem(name, position, letter, more)))
            return
        if rec.id is None:
            return
        if rec.id in sequences:
            if sequences[rec.id] != seq:
                errors.append(
                    InputError(
                        path,
                        rec.header_line,
                        f"id '{rec.id}' appears again (line {first_seen[rec.id]}) with a different sequence",
                    )
                )
            return
        sequences[rec.id] = seq
        first_seen[rec.id] = rec.header_line

    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line[0] == ">":
            if record is not None:
                finish(record)
            fields = line[1:].split(None, 1)
            seq_id = fields[0] if fields else None
            if seq_id is None:
                errors.append(InputError(path, number, "header '>' has no id"))
            record = _Record(seq_id, number)
        elif record is None:
            if not reported_preamble:
                shown = line if len(line) <= 30 else line[:30] + "..."
                errors.append(
                    InputError(path, number, f"text before the first '>' header ('{shown}'); is this a FASTA file?")
                )
                reported_preamble = True
        else:
            if " " in line or "\t" in line:
                line = "".join(line.split())
            record.chunks.append(line)
            record.chunk_lines.append(number)
    if record is not None:
        finish(record)

    raise_collected(errors)
    if not sequences:
        raise InputError(path, None, "file has no sequences")
    return sequences
