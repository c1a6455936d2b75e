"""The two tasks as data: how many sequences an example has and what its outputs are called.

Adding a task = one row here, a reader in ``protpeft.data``, a branch in ``load_task_data`` and a metric function.
"""

from __future__ import annotations

from dataclasses import dataclass

from protpeft.data.symmetry import SYMMETRY_CLASSES

__all__ = ["TASKS", "TaskSpec"]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    members: int
    """Sequences per example whose embeddings are averaged: 2 for a protein pair, 1 for a single chain."""
    label_names: tuple[str, ...]

    @property
    def outputs(self) -> int:
        return len(self.label_names)


TASKS: dict[str, TaskSpec] = {
    "ppi": TaskSpec("ppi", 2, ("interaction",)),
    "symmetry": TaskSpec("symmetry", 1, tuple(SYMMETRY_CLASSES)),
}
