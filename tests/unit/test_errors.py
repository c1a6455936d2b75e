"""Input errors cross process boundaries (Ray workers) intact; user errors reach the CLI as one line, no traceback."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from protpeft.errors import InputError, InputErrors

pytestmark = pytest.mark.unit


def test_input_errors_survive_pickling() -> None:
    one = pickle.loads(pickle.dumps(InputError("pairs.tsv", 17, "label '2' must be 0 or 1")))
    assert str(one) == "pairs.tsv:17: label '2' must be 0 or 1" and one.line == 17
    many = pickle.loads(pickle.dumps(InputErrors([InputError("a.fasta", 3, "empty"), InputError("b", None, "x")])))
    assert str(many) == "a.fasta:3: empty\nb: x" and len(many.errors) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data", "synth", "--task", "ppi", "--out", "{tmp}/synth", "--n", "5"], "n must be at least 20"),
        (
            ["data", "check", "--pairs", "{tmp}/pairs.tsv", "--sequences", "{tmp}/seqs.fasta", "--layout", "bogus"],
            "unknown pairs layout 'bogus'",
        ),
    ],
    ids=["synth-small-n", "check-unknown-layout"],
)
def test_user_errors_print_one_line_without_traceback(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "pairs.tsv").write_text("A\tB\t1\n")
    (tmp_path / "seqs.fasta").write_text(">A\nMKVL\n>B\nMKAL\n")
    command = [sys.executable, "-m", "protpeft.cli", *(a.format(tmp=tmp_path) for a in args)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error:") and message in out.stderr and len(out.stderr.strip().splitlines()) == 1
