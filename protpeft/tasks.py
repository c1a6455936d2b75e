"""The tasks as data: one :class:`TaskSpec` row per task, which every layer asks instead of comparing task names.

A row says how many sequences an example has, what its outputs are called, which reader, metric function and
prediction-file code it uses, and how ``Predictor.predict``, the pyfunc model and the HTTP API take its inputs.
The code a row points at is named ``"module:function"`` (:class:`~protpeft.lazy.LazyFunction`), so this table
imports neither torch nor scikit-learn. Adding a task: see "Adding a task" in the README.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from protpeft.data.symmetry import SYMMETRY_CLASSES
from protpeft.lazy import LazyFunction

__all__ = ["TASKS", "TaskSpec"]

_COUNT_WORDS = {2: "two", 3: "three", 4: "four"}


@dataclass(frozen=True)
class TaskSpec:
    name: str
    title: str
    """How messages name the task's models ("this is a PPI model")."""
    members: int
    """Sequences per example whose embeddings are averaged: 2 for a protein pair, 1 for a single chain."""
    label_names: tuple[str, ...]
    data_fields: tuple[str, ...]
    """The ``data.*`` keys the reader needs, the one that identifies the task first."""
    split_by_protein: bool
    """``split.method=auto`` without a split column splits by protein (pairs), else at random."""
    read: Callable[..., Any]
    """``read(DataConfig) -> TaskFiles``: the task's files read and validated into examples."""
    metrics: Callable[..., dict[str, float]]
    """``metrics(probs (N, outputs), targets, label_names) -> flat dict``."""
    inputs: str
    """The keyword ``Predictor.predict`` takes and the HTTP request field: ``pairs`` or ``sequences``."""
    item: str
    """One input, as messages name it (``pair 3 contains …``)."""
    input_example: str
    """The shape of ``inputs``, as Python (``predict``) and JSON (the HTTP API) both write it."""
    input_columns: tuple[str, ...]
    """The pyfunc model's input DataFrame columns, one per member."""
    read_prediction_inputs: Callable[..., Any]
    """``(pairs, sequences, fasta) -> (ids, examples, known labels or None)`` for ``protpeft predict``."""
    prediction_rows: Callable[..., Any]
    """``(label_names, ids, probs, predicted, known) -> (header, rows)`` of the predictions TSV."""

    @property
    def outputs(self) -> int:
        return len(self.label_names)

    @property
    def single_label(self) -> bool:
        """One output: probabilities are (N,) and a prediction is 0/1; else (N, classes) and a list of names."""
        return self.outputs == 1

    def as_examples(self, items: Sequence[Any]) -> list[tuple[str, ...]]:
        """``predict``'s input (plain sequences for one member, tuples of ``members`` sequences otherwise) as
        examples, the tuples of member sequences every later stage takes.

        Raises:
            ValueError: an item that does not hold ``members`` sequences.
        """
        if self.members == 1:
            return [(s,) for s in items]
        bad = [i for i, item in enumerate(items) if isinstance(item, str) or len(item) != self.members]
        if bad:
            count = _COUNT_WORDS.get(self.members, str(self.members))
            raise ValueError(f"{self.item} {bad[0]} does not hold exactly {count} sequences")
        return [tuple(item) for item in items]

    def probabilities(self, probs: Any) -> Any:
        """(N, outputs) model probabilities as the task reports them: (N,) for a single label."""
        return probs[:, 0] if self.single_label else probs

    def labels(self, probs: Any, label_names: Sequence[str], threshold: float = 0.5) -> list:
        """Predicted labels: 0/1 per example (single label) or the list of class names per example."""
        if self.single_label:
            return [int(p >= threshold) for p in probs]
        return [[n for n, p in zip(label_names, row, strict=True) if p >= threshold] for row in probs]

    def output_columns(self, label_names: Sequence[str]) -> list[str]:
        """Columns of a probability table (the pyfunc model's output): ``probability``, or one per class."""
        return ["probability"] if self.single_label else [str(n) for n in label_names]


TASKS: dict[str, TaskSpec] = {
    "ppi": TaskSpec(
        name="ppi",
        title="PPI",
        members=2,
        label_names=("interaction",),
        data_fields=("pairs", "sequences"),
        split_by_protein=True,
        read=LazyFunction("protpeft.data.datasets:read_ppi_files"),
        metrics=LazyFunction("protpeft.metrics:single_label_metrics"),
        inputs="pairs",
        item="pair",
        input_example="[[seq_a, seq_b], ...]",
        input_columns=("seq_a", "seq_b"),
        read_prediction_inputs=LazyFunction("protpeft.batch_predict:read_pair_inputs"),
        prediction_rows=LazyFunction("protpeft.batch_predict:pair_rows"),
    ),
    "symmetry": TaskSpec(
        name="symmetry",
        title="symmetry",
        members=1,
        label_names=tuple(SYMMETRY_CLASSES),
        data_fields=("table",),
        split_by_protein=False,
        read=LazyFunction("protpeft.data.datasets:read_symmetry_files"),
        metrics=LazyFunction("protpeft.metrics:multilabel_metrics"),
        inputs="sequences",
        item="sequence",
        input_example="[seq, ...]",
        input_columns=("sequence",),
        read_prediction_inputs=LazyFunction("protpeft.batch_predict:read_sequence_inputs"),
        prediction_rows=LazyFunction("protpeft.batch_predict:sequence_rows"),
    ),
}
