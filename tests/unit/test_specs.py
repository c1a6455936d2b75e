"""The task and mode tables: every row is complete and its code resolves; the rules they answer."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest

from protpeft.config import Mode, Task
from protpeft.lazy import LazyFunction
from protpeft.modes import MODES
from protpeft.tasks import TASKS

pytestmark = pytest.mark.unit


def test_tables_cover_the_config_choices() -> None:
    assert set(TASKS) == set(get_args(Task))
    assert set(MODES) == set(get_args(Mode))
    assert all(spec.name == name for name, spec in [*TASKS.items(), *MODES.items()])


@pytest.mark.parametrize("row", [*TASKS.values(), *MODES.values()], ids=lambda r: r.name)
def test_every_rows_code_resolves(row) -> None:
    lazy = [v for v in vars(row).values() if isinstance(v, LazyFunction)]
    assert lazy
    for function in lazy:
        assert callable(function.resolve()), function.target


def test_predict_inputs_become_examples() -> None:
    assert TASKS["ppi"].as_examples([("MKV", "AAG")]) == [("MKV", "AAG")]
    assert TASKS["symmetry"].as_examples(["MKV"]) == [("MKV",)]
    with pytest.raises(ValueError, match="pair 1 does not hold exactly two sequences"):
        TASKS["ppi"].as_examples([("MKV", "AAG"), ("MKV",)])


def test_probabilities_and_labels_follow_the_number_of_outputs() -> None:
    ppi, symmetry = TASKS["ppi"], TASKS["symmetry"]
    probs = np.array([[0.9], [0.2]])
    assert ppi.probabilities(probs).shape == (2,)
    assert ppi.labels(ppi.probabilities(probs), ppi.label_names) == [1, 0]
    names = symmetry.label_names[:2]
    assert symmetry.labels(np.array([[0.7, 0.6], [0.1, 0.4]]), names) == [list(names), []]
    assert ppi.output_columns(ppi.label_names) == ["probability"]
    assert symmetry.output_columns(names) == list(names)


def test_what_each_mode_holds() -> None:
    assert [m.name for m in MODES.values() if m.own_backbone] == ["full"]
    assert [m.name for m in MODES.values() if m.adapter] == ["lora"]
    assert [m.name for m in MODES.values() if m.encoder == "embeddings"] == ["frozen"]
    assert [m.name for m in MODES.values() if not m.saves_backbone] == ["frozen"]


def test_config_names_the_inputs_a_task_reads() -> None:
    from protpeft.config import load_config
    from protpeft.errors import ConfigError

    with pytest.raises(ConfigError, match=r"task ppi reads data.pairs \+ data.sequences, but only data.table is set"):
        load_config(None, ["task=ppi", "data.table=t.tsv"])
    with pytest.raises(ConfigError, match="task symmetry reads data.table, but only data.pairs is set"):
        load_config(None, ["task=symmetry", "data.pairs=p.tsv"])
    assert load_config(None, ["task=symmetry", "data.table=t.tsv"]).data.table is not None
