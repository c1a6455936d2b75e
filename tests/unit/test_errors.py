"""Input errors cross process boundaries (Ray workers) intact."""

from __future__ import annotations

import pickle

import pytest

from protpeft.errors import InputError, InputErrors

pytestmark = pytest.mark.unit


def test_input_errors_survive_pickling() -> None:
    one = pickle.loads(pickle.dumps(InputError("pairs.tsv", 17, "label '2' must be 0 or 1")))
    assert str(one) == "pairs.tsv:17: label '2' must be 0 or 1" and one.line == 17
    many = pickle.loads(pickle.dumps(InputErrors([InputError("a.fasta", 3, "empty"), InputError("b", None, "x")])))
    assert str(many) == "a.fasta:3: empty\nb: x" and len(many.errors) == 2
