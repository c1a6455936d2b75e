"""The benchmarks run as modules of the ``benchmarks`` package (they import ``benchmarks.common``)."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(f"benchmarks.{p.stem}" for p in (ROOT / "benchmarks").glob("bench_*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_benchmark_imports_as_a_module_and_explains_its_options(
    module: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as exited:
        importlib.import_module(module).main()
    assert exited.value.code == 0 and capsys.readouterr().out.startswith("usage:")


def test_make_bench_runs_the_benchmarks_as_modules() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^bench:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe, "Makefile has no bench target"
    commands = recipe.group(1).strip().splitlines()
    assert all(" -m benchmarks.bench_" in c for c in commands), commands
    assert {c.split(" -m ")[1].split()[0] for c in commands} <= set(MODULES)


def test_padding_counts_a_protein_a_batch_encodes_once_once(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmarks' padding fraction is of what a way computes: a hub protein in two pairs of a batch is one row
    for protpeft (padding over 3 rows) and two for the loop; the task's residues count it twice for both."""
    from types import SimpleNamespace

    from protpeft.data.datasets import Example
    from protpeft.data.tokens import TokenEncoder
    from protpeft.models.backbone import load_tokenizer

    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.bench_prefix_cache import encoded, result_row

    sequences = {"hub": "M" * 10, "a": "A" * 6, "b": "C" * 4}
    pairs = [Example(("hub", "a"), (1.0,)), Example(("hub", "b"), (0.0,))]
    data = SimpleNamespace(splits={"train": pairs}, sequences=sequences)
    tokens = TokenEncoder(load_tokenizer(str(tiny_model)), crop=1024)
    one_call = encoded(data, tokens, [[0, 1]], "calls", accelerator=True)
    assert one_call == (3 * 12, 10 + 6 + 4)  # hub, a, b in one call padded to hub's 12 tokens
    assert encoded(data, tokens, [[0, 1]], "loop") == (4 * 12, 2 * 10 + 6 + 4)
    row = result_row(data, tokens, 1024, "protpeft", [[0, 1]], 1.0, 1, accelerator=True)
    assert row["real_residues"] == 30 and row["padding_fraction"] == pytest.approx(1 - 20 / 36)
