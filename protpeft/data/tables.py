"""What the delimited readers (PPI pairs in the gold-standard layout, symmetry tables) check alike: the header's
columns, each row's field count and split name, every problem collected at its line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from protpeft.data.splits import normalize_split_name, split_problem
from protpeft.errors import InputError

__all__ = ["RowCheck", "column_positions"]


def column_positions(
    path: str | Path, line: int, header: list[str], required: tuple[str, ...], needs: str
) -> dict[str, int]:
    """Each column's position by name (its first occurrence in ``header``).

    Raises:
        InputError: at the header's ``line``, naming every ``required`` column it lacks, what the file ``needs``
        and the columns found.
    """
    missing = [c for c in required if c not in header]
    if missing:
        quoted = [f"'{c}'" for c in missing]
        names = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"
        plural = "s" if len(missing) > 1 else ""
        raise InputError(path, line, f"header has no {names} column{plural} ({needs}; found {header})")
    positions: dict[str, int] = {}
    for i, name in enumerate(header):
        positions.setdefault(name, i)
    return positions


@dataclass
class RowCheck:
    """The checks of one data row: each problem goes to the reader's ``errors`` at the row's line, and the row is
    kept only when it had none (``ok``)."""

    path: str | Path
    line: int
    errors: list[InputError]
    ok: bool = field(default=True, init=False)

    def problem(self, text: str) -> None:
        self.errors.append(InputError(self.path, self.line, text))
        self.ok = False

    def has_fields(self, fields: list[str], columns: list[str]) -> bool:
        """Whether the row has one field per column (else a problem naming the columns)."""
        complete = len(fields) == len(columns)
        if not complete:
            self.problem(f"expected {len(columns)} fields ({', '.join(columns)}), found {len(fields)}")
        return complete

    def split(self, raw: str | None) -> str | None:
        """The normalised split name of a ``split`` field (None when the table has no split column)."""
        if raw is None:
            return None
        name = normalize_split_name(raw)
        if name is None:
            self.problem(split_problem(raw))
        return name
