"""``protpeft tune TUNE.yaml``, ``protpeft tune --resume EXPERIMENT`` and ``protpeft tune report EXPERIMENT``.

``protpeft.cli`` calls :func:`register` at import; Ray, MLflow and matplotlib are imported inside the command
bodies, so ``protpeft --help`` stays fast. The search itself is the sub-command ``run``; the group hands anything
that is not a sub-command name to it, so ``protpeft tune TUNE.yaml`` and ``protpeft tune run TUNE.yaml`` are the
same command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from protpeft.console import ClusterOpt, StorageOpt, VerboseOpt, set_verbosity

__all__ = ["register", "tune_app"]


class _SearchByDefault(TyperGroup):
    """``tune TUNE.yaml [options]`` and ``tune --resume EXP`` mean ``tune run …``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


tune_app = typer.Typer(
    cls=_SearchByDefault,
    help="Hyperparameter search with Ray Tune (each trial a Ray Train run) and the robustness report. "
    "`protpeft tune TUNE.yaml` runs a search (same as `tune run`).",
    no_args_is_help=True,
)


@tune_app.command("run")
def run_command(
    tune_file: Annotated[
        Path, typer.Argument(help="TUNE.yaml (base config, space, search); with --resume also its experiment dir.")
    ],
    address: ClusterOpt = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the interrupted experiment; finished trials are kept. An experiment kept in storage "
            "resumes anywhere with the same --storage (its directory here may be gone).",
        ),
    ] = False,
    register_best: Annotated[
        str | None,
        typer.Option(
            "--register-best", "--register-as", help="Register the best finished trial under this model name."
        ),
    ] = None,
    alias: Annotated[str | None, typer.Option(help="Alias for the registered version, e.g. champion.")] = None,
    report: Annotated[bool, typer.Option(help="Write the robustness report when the search completes.")] = True,
    storage: StorageOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run the hyperparameter search of TUNE_FILE: trials as Ray Train runs, nested MLflow runs, ASHA (optional),
    then trials.json and the robustness report in the experiment directory. Exits 130 when interrupted.

    Example: protpeft tune configs/tune/demo.yaml --register-best demo-tuned
    """
    set_verbosity(verbose)
    from protpeft.console import console
    from protpeft.tune.experiment import run_search

    if alias and not register_best:
        raise typer.BadParameter("--alias needs --register-best NAME", param_hint="--alias")
    result = run_search(
        tune_file,
        address=address,
        resume=resume,
        storage=storage,
        register_best=register_best,
        alias=alias,
        report=report,
    )
    console.print(trials_table(result.trials, result.best, result.metric))
    if result.interrupted:
        where = f" --storage {result.storage}" if result.storage else ""  # found there from any machine
        console.print(f"interrupted; continue with: protpeft tune --resume {result.experiment_dir}{where}",
                      highlight=False)  # fmt: skip
        raise typer.Exit(130)
    console.print(f"trials: {result.trials_file}", highlight=False)
    if result.report is not None:
        console.print(f"report: {result.report}", highlight=False)
    if result.registered:
        console.print(f"registered {result.registered} (trial {result.best['trial_id']})", highlight=False)


@tune_app.command("report")
def report_command(
    experiment: Annotated[Path, typer.Argument(help="Experiment directory (holding trials.json).")],
    out: Annotated[Path | None, typer.Option(help="Output directory (default: EXPERIMENT/report).")] = None,
    mlflow: Annotated[bool, typer.Option(help="Also log the report to the experiment's parent MLflow run.")] = True,
) -> None:
    """Write the robustness report (Markdown, HTML, PNG plots) of a finished search.

    Example: protpeft tune report runs/tune/demo
    """
    from protpeft.console import console
    from protpeft.tune.report import load_trials, log_report, write_report

    files = write_report(experiment, out)
    data = load_trials(experiment)
    if mlflow and data.get("tracking_uri") and data.get("parent_run_id"):
        log_report(files, data["tracking_uri"], data["parent_run_id"])
    console.print(
        f"report: {files.markdown}\n        {files.html}\nplots: {len(files.plots)} in {files.directory}",
        highlight=False,
    )


def trials_table(rows: list[dict], best: dict | None, metric: str):
    """One row per trial: its searched values, steps and the search's own metric (the best marked with *)."""
    from rich.table import Table

    keys = [k for k in rows[0]["config"] if k != "mode"] if rows else []  # mode has its own column
    table = Table(title="trials")
    for column in ("trial", "state", "mode", *keys, "steps", metric):
        table.add_column(column, justify="left" if column in ("trial", "state", "mode") else "right")
    for row in rows:
        mark = " *" if best is not None and row["trial_id"] == best["trial_id"] else ""
        value = row["metrics"].get(metric)
        table.add_row(
            row["trial_id"] + mark,
            row["state"],
            row["mode"],
            *(_cell(row["config"].get(k)) for k in keys),
            str(row["steps"] or 0),
            f"{value:.4f}" if value is not None else "—",
        )
    return table


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return "+".join(map(str, value))
    return str(value)


def register(app: typer.Typer) -> None:
    app.add_typer(tune_app, name="tune")
