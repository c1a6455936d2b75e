"""``protpeft predict TARGET``: a target that is neither a run directory nor a registered model says so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from protpeft.errors import ProtpeftError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("target", ["/no/such/dir", "runs/missing/run", "./nothing/here"])
def test_a_missing_run_directory_is_named_as_such(target: str) -> None:
    from protpeft.cli import load_predictor

    with pytest.raises(ProtpeftError, match="no run directory or registered model of that name exists") as err:
        load_predictor(target)
    assert "version must be" not in str(err.value)


def test_the_cli_prints_it_as_one_line(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("MKT\tMKV\n")
    out = subprocess.run([sys.executable, "-m", "protpeft.cli", "predict", "/no/such/dir", "--pairs", str(pairs),
                          "--out", str(tmp_path / "out.tsv")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "/no/such/dir: no run directory or registered model of that name exists" in out.stderr
    assert "Traceback" not in out.stderr
