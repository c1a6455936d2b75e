"""Shared pieces of the benchmarks: a random ESM-2 of a real size, E. coli data from ../shared, a timed training
pass, result tables."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from protpeft.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED_DATA = Path(os.environ.get("PROTPEFT_PPI_DATA", ROOT.parent / "shared" / "data" / "ppi-dscript"))
"""The D-SCRIPT pairs: ../shared beside the checkout, or where PROTPEFT_PPI_DATA points (a machine without it)."""


def random_esm2(preset: str = "esm2_t6_8M_UR50D") -> Path:
    """A random-initialised ESM-2 of a real architecture (weights cannot be downloaded here)."""
    from protpeft.models.backbone import ESM2_PRESETS, init_tiny

    layers, hidden, heads, intermediate = ESM2_PRESETS[preset]
    return init_tiny(Path(tempfile.mkdtemp(prefix=f"{preset}-")), layers, hidden, heads, intermediate)


def ecoli_or_exit() -> Path:
    if not (SHARED_DATA / "ecoli_test.tsv").is_file():
        raise SystemExit(f"skipped: real E. coli data not found at {SHARED_DATA} (../shared beside the checkout)")
    return SHARED_DATA


def ecoli_ppi_config(*overrides: str) -> RunConfig:
    """A PPI config on the real E. coli pairs (seeded random split) and a random ESM-2 8M, one batch per step."""
    from protpeft.config import load_config

    data_dir = ecoli_or_exit()
    return load_config(
        None,
        [
            f"model.base={random_esm2()}",
            f"data.pairs={data_dir / 'ecoli_test.tsv'}",
            f"data.sequences={data_dir / 'ecoli.fasta'}",
            "data.split.method=random",
            "optim.grad_accum=1",
            *overrides,
        ],
    )


def train_on(engine, collate, examples: list, batches: list[list[int]]) -> float:
    """One optimizer step per batch (indices into ``examples``), on the engine's device as the loop moves it; the
    seconds it took (on a GPU, until its queued work has finished)."""
    from protpeft.trainer.loop import train_on_batch

    device = engine.ctx.device
    start = time.perf_counter()
    for batch in batches:
        train_on_batch(engine, collate([examples[i] for i in batch]), device, boundary=True)
        engine.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def write_results(name: str, rows: list[dict[str, Any]], notes: dict[str, Any]) -> None:
    """benchmarks/results/<name>.json and .md, and the table on stdout."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or "cpu"}
    (RESULTS / f"{name}.json").write_text(json.dumps({"rows": rows, "notes": notes, "env": env}, indent=2))
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[c]) for c in columns) + " |")
    lines += ["", *[f"- {k}: {_fmt(v)}" for k, v in notes.items()], f"- env: {env}"]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
