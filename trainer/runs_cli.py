"""``protpeft runs ls|pull``: runs kept in a storage (a directory or an object store), seen and fetched from any
machine — the way back for results of a run trained on a cluster, or submitted as a job, without any node's disk."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from protpeft.console import console

__all__ = ["runs_app"]

runs_app = typer.Typer(help="Runs in a storage: list them, pull a finished run's directory.", no_args_is_help=True)

StorageArg = Annotated[
    str,
    typer.Option(
        "--storage",
        help="The runs' storage, as given to train: a directory or s3://BUCKET/PREFIX (AWS_* variables).",
    ),
]


@runs_app.command("ls")
def runs_ls(storage: StorageArg) -> None:
    """List the runs in STORAGE (finished ones can be pulled)."""
    from rich.table import Table

    from protpeft.trainer.ray_run_store import list_runs
    from protpeft.trainer.storage import RunStorage

    table = Table(title=f"runs in {storage}")
    for column in ("run", "state", "where"):
        table.add_column(column)
    for run in list_runs(RunStorage.parse(storage)):
        table.add_row(run["name"], "finished" if run["finished"] else "unfinished", run["uri"])
    console.print(table)


@runs_app.command("pull")
def runs_pull(
    name: Annotated[str, typer.Argument(help="The run's name (its config's `name`).")],
    storage: StorageArg,
    out: Annotated[Path | None, typer.Option(help="Run directory to write (default: runs/NAME).")] = None,
) -> None:
    """Fetch a finished run's directory (adapter/backbone, head, protpeft.json) from STORAGE."""
    from protpeft.trainer.ray_run_store import pull_run
    from protpeft.trainer.storage import RunStorage

    run_dir = pull_run(RunStorage.parse(storage), name, out or Path("runs") / name)
    console.print(f"pulled {name} into {run_dir}")
