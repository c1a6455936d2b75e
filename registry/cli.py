"""``protpeft registry ...`` and ``protpeft mlflow-server``: parse, call one registry function, print.

MLflow is imported inside the functions called, so registering these commands costs nothing at start-up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

__all__ = ["human_size", "register"]

registry_app = typer.Typer(
    help="Registered models (MLflow): register runs, aliases, list, show, compare, pull. The store is "
    "$MLFLOW_TRACKING_URI, else sqlite:///<$PROTPEFT_HOME or cwd>/mlflow.db.",
    no_args_is_help=True,
)
console = Console()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
RefArg = Annotated[str, typer.Argument(help="NAME (latest version), NAME@ALIAS or NAME/VERSION.")]


def human_size(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def _print_table(table: Any) -> None:
    # Tables keep their natural width when stdout is a pipe (where Rich assumes 80 columns and elides cells).
    (console if console.is_terminal else Console(width=200)).print(table)


def _print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


@registry_app.command("register")
def register_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Registered model name, e.g. ppi-lora.")],
    alias: Annotated[str | None, typer.Option(help="Point this alias at the new version, e.g. champion.")] = None,
    description: Annotated[str | None, typer.Option(help="Version description (default: generated).")] = None,
    run_id: Annotated[str | None, typer.Option(help="MLflow run that tracked RUN_DIR (default: a new run).")] = None,
) -> None:
    """Register RUN_DIR as a new version of NAME. Example: protpeft registry register runs/ppi-lora --name ppi-lora
    --alias champion"""
    from protpeft.registry import register_run

    version = register_run(run_dir, name, alias=alias, mlflow_run_id=run_id, description=description)
    console.print(f"registered {version} ({version.mode}, {human_size(version.size_bytes)})")


@registry_app.command("list")
def list_cmd(json_: JsonOpt = False) -> None:
    """List registered models with their latest version and aliases."""
    from rich.table import Table

    from protpeft.registry import list_models

    models = list_models()
    if json_:
        _print_json([m.to_dict() for m in models])
        return
    table = Table(title="registered models")
    for column in ("name", "latest", "aliases", "updated", "description"):
        table.add_column(column)
    for m in models:
        aliases = ", ".join(f"{a}→{v}" for a, v in m.aliases.items())
        table.add_row(m.name, _fmt(m.latest_version), aliases, m.updated, m.description)
    _print_table(table)


@registry_app.command("show")
def show_cmd(ref: RefArg) -> None:
    """Show one version: metrics, lineage (run, dataset fingerprint, base model, commit), size, created."""
    from protpeft.registry import get_version

    v = get_version(ref)
    data = v.to_dict()
    data["size"] = human_size(v.size_bytes)
    _print_json(data)


@registry_app.command("alias")
def alias_cmd(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[int, typer.Argument(help="Version number.")],
    alias: Annotated[str, typer.Argument(help="Alias, e.g. champion.")],
) -> None:
    """Point ALIAS of NAME at VERSION (moving it from another version)."""
    from protpeft.registry import set_alias

    v = set_alias(name, version, alias)
    console.print(f"{name}@{alias} → version {v.version}")


DEFAULT_COMPARE = ("val_aupr", "val_auroc", "val_f1", "val_mcc", "test_aupr", "test_auroc")


@registry_app.command("compare")
def compare_cmd(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    metric: Annotated[
        list[str] | None,
        typer.Option(
            "--metric",
            "-m",
            help="Metric column (repeatable); default: the main val/test metrics in the "
            "table, every metric with --json.",
        ),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """A table of NAME's versions × their final metrics, with mode and artefact size."""
    from rich.table import Table

    from protpeft.registry import compare_versions

    rows = compare_versions(name, metric or None)
    if json_:
        _print_json(rows)
        return
    shown = list(metric) if metric else [m for m in DEFAULT_COMPARE if rows and m in rows[0]]
    table = Table(title=f"{name}: versions × metrics")
    for column in ("version", "aliases", "mode", "size", *shown):
        table.add_column(column, justify="left" if column in ("aliases", "mode") else "right")
    for row in rows:
        cells = [_fmt(row["version"]), row["aliases"], _fmt(row["mode"]), human_size(row["size_bytes"])]
        table.add_row(*cells, *(_fmt(row.get(m)) for m in shown))
    _print_table(table)


@registry_app.command("pull")
def pull_cmd(
    ref: RefArg,
    to: Annotated[Path, typer.Option("--to", help="New (or empty) directory to write the run directory into.")],
) -> None:
    """Download a version's artefact files (safetensors/JSON, checked against their manifest) into --to."""
    from protpeft.registry import get_version, pull

    version = get_version(ref)
    path = pull(version.ref, to)
    console.print(f"pulled {version} ({human_size(version.size_bytes)}) into {path}")


def mlflow_server_cmd(
    host: Annotated[str, typer.Option(help="Interface to bind; 0.0.0.0 to serve the lab's network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5000,
    backend_store_uri: Annotated[
        str | None, typer.Option(help="sqlite:///<path> or postgresql://user:pw@host/db (default: project mlflow.db).")
    ] = None,
    artifacts_destination: Annotated[
        str | None, typer.Option(help="Where proxied artefacts are stored (default: project mlartifacts/).")
    ] = None,
    workers: Annotated[int, typer.Option(help="Server worker processes.")] = 2,
    allowed_hosts: Annotated[
        str | None, typer.Option(help="Host headers to accept when serving beyond loopback, e.g. 'mlflow.lab:5000'.")
    ] = None,
    job_execution: Annotated[
        bool, typer.Option(help="Also run MLflow's server-side job runner (GenAI jobs; ~8 more processes).")
    ] = False,
) -> None:
    """Run a shared MLflow tracking + registry server (artefacts proxied) until interrupted. Clients set
    MLFLOW_TRACKING_URI=http://HOST:PORT."""
    from protpeft.registry.server import start_server

    extra = ["--allowed-hosts", allowed_hosts] if allowed_hosts else []
    server = start_server(backend_store_uri, artifacts_destination, host, port, workers, extra_args=extra,
                          job_execution=job_execution)  # fmt: skip
    try:
        server.wait_ready()
        console.print(f"MLflow server ready at {server.url}; clients: export MLFLOW_TRACKING_URI={server.url}")
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def register(app: typer.Typer) -> None:
    """Add ``registry`` and ``mlflow-server`` to the main ``protpeft`` app."""
    app.add_typer(registry_app, name="registry")
    app.command("mlflow-server")(mlflow_server_cmd)
