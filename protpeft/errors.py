"""Errors a user can act on: each names the file, the line and the problem.

The CLI turns these into one-line messages (no traceback) and a non-zero exit code.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = ["ConfigError", "InputError", "InputErrors", "ProtpeftError"]


class ProtpeftError(Exception):
    """Base class for errors whose message is meant for the user as it is."""


class InputError(ProtpeftError):
    """A problem in an input file at a given line (1-based; ``None`` when it concerns the whole file)."""

    def __init__(self, path: str | Path, line: int | None, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        super().__init__(self.location + ": " + problem)

    def __reduce__(self):  # picklable across Ray workers despite the custom __init__
        return (type(self), (self.path, self.line, self.problem))

    @property
    def location(self) -> str:
        return f"{self.path}:{self.line}" if self.line is not None else self.path


class InputErrors(ProtpeftError):
    """Several input errors found in one pass, reported together so a user can fix them all at once."""

    def __init__(self, errors: Iterable[InputError], limit: int = 50) -> None:
        self.errors = list(errors)
        shown = [str(e) for e in self.errors[:limit]]
        more = len(self.errors) - len(shown)
        if more > 0:
            shown.append(f"... and {more} more errors")
        super().__init__("\n".join(shown))

    def __reduce__(self):
        return (type(self), (self.errors,))


class ConfigError(ProtpeftError):
    """An invalid run configuration or command option; the message lists every problem with its key (and YAML line
    when known)."""
