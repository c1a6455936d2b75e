"""ESM-2's residue alphabet and the normalisation every reader applies to a raw sequence."""

from __future__ import annotations

import re

__all__ = ["ESM_LETTERS", "first_bad_letter", "normalize_sequence"]

ESM_LETTERS = "LAGVSERTIDPKQNFYMHWCXBUZO"
"""The 25 residue letters of ESM-2's vocabulary (X, B, Z, U and O are real tokens there and are kept as such)."""

_BAD_LETTER = re.compile(f"[^{ESM_LETTERS}]")
_WHITESPACE = re.compile(r"\s+")


def normalize_sequence(raw: str) -> str:
    """Remove whitespace, uppercase, and drop one trailing ``*`` (a stop codon). Does not validate."""
    seq = _WHITESPACE.sub("", raw).upper()
    return seq[:-1] if seq.endswith("*") else seq


def first_bad_letter(seq: str) -> tuple[int, str] | None:
    """1-based position and character of the first character of ``seq`` not in :data:`ESM_LETTERS`, else None."""
    match = _BAD_LETTER.search(seq)
    return None if match is None else (match.start() + 1, match.group())


def count_bad_letters(seq: str) -> int:
    """How many characters of ``seq`` are not in :data:`ESM_LETTERS`."""
    return len(_BAD_LETTER.findall(seq))


def show_char(ch: str) -> str:
    """A character quoted for an error message (``'J'``; escapes for invisible ones)."""
    return f"'{ch}'" if ch.isprintable() and ch != "'" else repr(ch)


def bad_letter_problem(seq_id: str, position: int, letter: str, more: int = 0) -> str:
    """The message for a sequence holding a character that is not an amino-acid letter."""
    text = f"sequence '{seq_id}' contains {show_char(letter)} at position {position}"
    text += ", which is not an amino-acid letter"
    if more:
        text += f" ({more} more such character{'s' if more > 1 else ''} later in the sequence)"
    return text
