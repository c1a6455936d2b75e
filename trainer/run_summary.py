"""run-many's results: one flat row per job, the best finished one, ``summary.json`` / ``summary.md`` and the table
printed at the end. :func:`best_row` also picks a Tune experiment's best trial (its rows have the same ``state`` and
``metrics``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from protpeft.trainer.run_many import Job

__all__ = ["best_row", "summary_rows", "summary_table", "write_summary"]


def summary_rows(jobs: list[Job], results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per job: mode, trainable params, peak memory, time, val/test AUPR, state, error."""
    rows = []
    for job in jobs:
        res = results.get(job.name, {"state": "FAILED", "error": "no result"})
        metrics, params = res.get("metrics") or {}, res.get("params") or {}
        rows.append(
            {
                "job": job.name,
                "mode": job.cfg.mode,
                "task": job.cfg.task,
                "state": res.get("state"),
                "trainable_params": params.get("trainable"),
                "total_params": params.get("total"),
                "peak_memory_mb": res.get("peak_memory_mb"),
                "seconds": res.get("seconds"),
                "steps": res.get("steps"),
                "val_aupr": metrics.get("val_aupr"),
                "test_aupr": metrics.get("test_aupr"),
                "workers": job.cfg.engine.workers,
                "resources": job.resources,
                "run_dir": res.get("run_dir"),
                "error": res.get("error"),
                "mlflow_run_id": res.get("mlflow_run_id"),
                "metrics": metrics,
            }
        )
    return rows


def best_row(rows: list[dict[str, Any]], metric: str = "val_aupr", mode: str = "max") -> dict[str, Any] | None:
    """The FINISHED row (a run-many job, a Tune trial) with the best final ``metrics[metric]``; None when no finished
    row has it as a number. (Early-stopped or failed rows have no complete artefact.)"""
    scored = [r for r in rows if r["state"] == "FINISHED" and _is_number(r["metrics"].get(metric))]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda r: r["metrics"][metric])


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "—"
    return format(value, spec) if spec else str(value)


COLUMNS = (
    ("job", "job", ""),
    ("mode", "mode", ""),
    ("trainable", "trainable_params", ","),
    ("peak MB", "peak_memory_mb", ".0f"),
    ("time s", "seconds", ".1f"),
    ("val AUPR", "val_aupr", ".4f"),
    ("test AUPR", "test_aupr", ".4f"),
    ("state", "state", ""),
)


def write_summary(rows: list[dict[str, Any]], output: Path) -> tuple[Path, Path]:
    """``summary.json`` (every field) and ``summary.md`` (the comparison table) in ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output / "summary.json", output / "summary.md"
    json_path.write_text(json.dumps(rows, indent=2, default=str) + "\n")
    lines = ["| " + " | ".join(title for title, _, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(key), spec) for _, key, spec in COLUMNS) + " |")
    failed = [row for row in rows if row.get("error")]
    if failed:
        lines += ["", *(f"- {row['job']}: {row['error']}" for row in failed)]
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def summary_table(rows: list[dict[str, Any]]):
    from rich import box
    from rich.table import Table

    table = Table(title="run-many summary", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for title, key, _ in COLUMNS:  # numbers and states never wrap; a long job name folds
        justify = "left" if key in ("job", "mode", "state") else "right"
        table.add_column(
            title, justify=justify, no_wrap=key != "job", overflow="fold", min_width=8 if key == "job" else None
        )
    for row in rows:
        table.add_row(*(_fmt(row.get(key), spec) for _, key, spec in COLUMNS))
    return table
