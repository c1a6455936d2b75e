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
