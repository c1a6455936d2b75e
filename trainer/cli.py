"""Commands of the distributed trainer: ``run-many``, ``submit`` and ``jobs list|logs|stop|status``.

``protpeft.cli`` calls :func:`register` at import; Ray is imported only inside the command bodies, so
``protpeft --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from protpeft.console import (
    VERBOSE_ENV,
    ClusterOpt,
    JobsAddressOpt,
    StorageOpt,
    VerboseOpt,
    console,
    err_console,
    set_verbosity,
)
from protpeft.errors import ProtpeftError

__all__ = ["register"]

JobIdArg = Annotated[str, typer.Argument(help="Submission id, as printed by `protpeft submit` or `jobs list`.")]

jobs_app = typer.Typer(
    help="Manage Ray jobs: list, logs, stop, status (token auth: see `protpeft submit --help`).", no_args_is_help=True
)


def _start_tracking(cfg):
    """The job's tracked run (its MLflow run created here, ended by the job's driver task), or None while the
    registry that provides tracking is not installed."""
    try:
        from protpeft.registry.run_lifecycle import start
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("protpeft.registry"):
            return None
        raise
    return start(cfg)


def run_many_command(
    jobs: Annotated[Path, typer.Argument(help="JOBS.yaml: a list of jobs, or base config x grid of overrides.")],
    address: ClusterOpt = None,
    output: Annotated[
        Path | None, typer.Option(help="Where summary.json / summary.md go (default: from JOBS).")
    ] = None,
    register_as: Annotated[
        str | None, typer.Option(help="Register the best finished job (by --metric) under this model name.")
    ] = None,
    alias: Annotated[str | None, typer.Option(help="Alias for the registered version, e.g. champion.")] = None,
    metric: Annotated[str, typer.Option(help="Final metric that picks the best job (higher is better).")] = "val_aupr",
    storage: StorageOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Launch every job of JOBS.yaml on the cluster at once (each with its own resources; what does not fit
    waits), show a live table (per job: state, step / total, loss, validation metric, ETA), and write a summary.
    Exits 1 when a job failed. With --storage every job's run goes to STORAGE/<job name>; the storage is checked
    once, before any job starts.

    Example: protpeft run-many configs/demo/jobs.yaml --address HEAD:6379 --storage s3://my-bucket/protpeft
    """
    set_verbosity(verbose)
    from protpeft.trainer.run_many import run_many

    rows = run_many(jobs, address=address, tracking=_start_tracking, output=output, storage=storage, console=console)
    if register_as:
        from protpeft.registry import register_run
        from protpeft.trainer.run_summary import best_row

        best = best_row(rows, metric)
        if best is None:
            raise ProtpeftError(f"no finished job reported {metric}; nothing registered")
        version = register_run(best["run_dir"], register_as, alias=alias, mlflow_run_id=best["mlflow_run_id"])
        console.print(f"registered best job {best['job']} ({metric} {best['metrics'][metric]:.4f}) as {version}")
    if any(row["state"] != "FINISHED" for row in rows):
        raise typer.Exit(1)


def submit_command(
    command: Annotated[list[str] | None, typer.Argument(help="The protpeft command to run, after --.")] = None,
    address: JobsAddressOpt = None,
    working_dir: Annotated[
        Path | None, typer.Option(help="Directory shipped as the job's working dir (default: the current one).")
    ] = Path("."),
    no_working_dir: Annotated[
        bool, typer.Option("--no-working-dir", help="Ship nothing: files are already on the cluster.")
    ] = False,
    submission_id: Annotated[str | None, typer.Option(help="Choose the job's id.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the job to end, then print its logs.")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="The job's logs include Ray's own output (as its --verbose).")
    ] = False,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            help="An environment variable for the job: NAME=VALUE, or NAME to pass this shell's value (repeatable; "
            "e.g. --env AWS_ENDPOINT_URL --env AWS_ACCESS_KEY_ID --env AWS_SECRET_ACCESS_KEY --env "
            "MLFLOW_TRACKING_URI). Values are visible in the cluster's dashboard; never the Ray token.",
        ),
    ] = None,
) -> None:
    """Submit a protpeft command to a Ray cluster as a job (Ray Jobs API).

    Example: protpeft submit --address http://HEAD:8265 -- train configs/ppi_lora.yaml --set optim.lr=3e-4

    protpeft must be installed on the cluster; the working dir carries configs and data named by relative paths.
    Clusters with token authentication: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or
    ~/.ray/auth_token); the token is sent as a header and never printed.
    """
    from protpeft.trainer.jobs import job_env, job_logs, job_status, submit_job

    job_id = submit_job(
        list(command or []),
        address=address,
        working_dir=None if no_working_dir else working_dir,
        submission_id=submission_id,
        env_vars={**job_env(env or []), **({VERBOSE_ENV: "1"} if verbose else {})} or None,
    )
    console.print(f"submitted {job_id}", highlight=False)
    if wait:
        status = job_status(address, job_id, wait=True)
        sys.stdout.write(job_logs(address, job_id))
        err_console.print(f"job {job_id}: {status}", highlight=False)
        if status != "SUCCEEDED":
            raise typer.Exit(1)


@jobs_app.command("list")
def jobs_list(address: JobsAddressOpt = None) -> None:
    """List the cluster's jobs."""
    from rich.table import Table

    from protpeft.trainer.jobs import list_jobs

    table = Table(title="jobs")
    for column in ("submission id", "status", "entrypoint", "message"):
        table.add_column(column)
    for job in list_jobs(address):
        table.add_row(job["submission_id"], job["status"], job["entrypoint"], (job["message"] or "")[:80])
    console.print(table)


@jobs_app.command("status")
def jobs_status(
    job_id: JobIdArg,
    address: JobsAddressOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the job ends; exit 1 unless it succeeded.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Give up waiting after this many seconds.")] = None,
) -> None:
    """Print a job's status."""
    from protpeft.trainer.jobs import job_status

    status = job_status(address, job_id, wait=wait, timeout_s=timeout)
    console.print(status, highlight=False)
    if wait and status != "SUCCEEDED":
        raise typer.Exit(1)


@jobs_app.command("logs")
def jobs_logs(
    job_id: JobIdArg,
    address: JobsAddressOpt = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
) -> None:
    """Print a job's logs."""
    from protpeft.trainer.jobs import job_logs, tail_logs

    if follow:
        for chunk in tail_logs(address, job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()
    else:
        sys.stdout.write(job_logs(address, job_id))


@jobs_app.command("stop")
def jobs_stop(job_id: JobIdArg, address: JobsAddressOpt = None) -> None:
    """Stop a running job."""
    from protpeft.trainer.jobs import stop_job

    console.print(f"stopping {job_id}" if stop_job(address, job_id) else f"{job_id} had already ended")


def register(app: typer.Typer) -> None:
    """Add ``run-many``, ``submit`` and ``jobs`` to the root app."""
    app.command("run-many")(run_many_command)
    app.command("submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(submit_command)
    app.add_typer(jobs_app, name="jobs")
    from protpeft.trainer.runs_cli import runs_app

    app.add_typer(runs_app, name="runs")
