"""The ``protpeft`` command line. Each command parses, calls one function, prints; heavy imports stay inside the
command bodies so ``protpeft --help`` is fast. Errors a user can fix print as one line, without a traceback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from protpeft.cache_cli import cache_app
from protpeft.console import (
    ClusterOpt,
    ConfigArg,
    SetOpt,
    StorageOpt,
    VerboseOpt,
    console,
    err_console,
    print_json,
    set_verbosity,
)
from protpeft.errors import ProtpeftError

app = typer.Typer(
    name="protpeft",
    help="Parameter-efficient fine-tuning of ESM-2 protein language models: train, compare, track, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Check and generate input data.", no_args_is_help=True)
model_app = typer.Typer(help="Backbone checkpoints.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")
app.add_typer(cache_app, name="cache")


def load_predictor(model: str, base: str | None = None):
    """A run directory, or a registered model reference (``NAME@alias`` / ``NAME/version``) when the registry is
    installed."""
    from protpeft.predict import Predictor

    if Path(model).is_dir():
        return Predictor.from_run_dir(model, base=base)
    try:
        from protpeft.registry import RegistryError, load, parse_ref
    except ImportError:
        raise ProtpeftError(f"{model}: no such run directory") from None
    try:
        parse_ref(model)
    except RegistryError:
        raise ProtpeftError(
            f"{model}: no run directory or registered model of that name exists (a registered model is named "
            "NAME, NAME@ALIAS or NAME/VERSION)"
        ) from None
    return load(model, base=base)


# --------------------------------------------------------------------------------------------------------------
# train / evaluate / predict / params


@app.command()
def train(
    config: ConfigArg,
    set_: SetOpt = None,
    address: ClusterOpt = None,
    workers: Annotated[int | None, typer.Option(help="Ray Train workers (engine.workers).")] = None,
    cpus_per_worker: Annotated[float | None, typer.Option(help="CPUs per worker.")] = None,
    gpus_per_worker: Annotated[float | None, typer.Option(help="GPUs per worker; fractions pack jobs.")] = None,
    storage: StorageOpt = None,
    local: Annotated[bool, typer.Option("--local", help="Train in this process, without Ray (debugging).")] = False,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue a stopped run: its run directory or name (checkpoints in its storage), or a "
            "checkpoint directory."
        ),
    ] = None,
    register_as: Annotated[str | None, typer.Option(help="Register the finished run under this model name.")] = None,
    alias: Annotated[str | None, typer.Option(help="Alias for the registered version, e.g. champion.")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Train a model from CONFIG (through Ray Train) and write its run directory."""
    set_verbosity(verbose)
    from protpeft.trainer.train_command import train_from_cli

    outcome = train_from_cli(
        config, set_, address=address, workers=workers, cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker, storage=storage, local=local, resume=resume, register_as=register_as,
        alias=alias,
    )  # fmt: skip
    _print_result(outcome)
    if outcome.registered is not None:
        console.print(f"registered {outcome.registered}")


def _print_result(summary: dict[str, Any]) -> None:
    from rich.table import Table

    metrics = summary.get("metrics", {})
    table = Table(title=f"run {summary.get('run_dir')}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if "/" not in key:
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    rest = {k: v for k, v in summary.items() if k != "metrics"}
    print_json(rest)


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    config: Annotated[Path | None, typer.Option(help="Data config; default: the run's own config.")] = None,
    set_: SetOpt = None,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    base: Annotated[str | None, typer.Option(help="Use this base model location instead of the recorded one.")] = None,
) -> None:
    """Evaluate a saved run on a split of its (or another config's) data; prints metrics as JSON."""
    from protpeft.evaluation import evaluate_run

    print_json(evaluate_run(run_dir, config, set_, split, base))


@app.command()
def predict(
    model: Annotated[
        str, typer.Argument(help="A run directory, or a registered model: NAME@ALIAS, NAME/VERSION or NAME (latest).")
    ],
    out: Annotated[Path, typer.Option(help="Output TSV.")],
    pairs: Annotated[Path | None, typer.Option(help="PPI pairs (either layout); labels optional.")] = None,
    sequences: Annotated[Path | None, typer.Option(help="FASTA with the sequences the pairs name.")] = None,
    input_: Annotated[Path | None, typer.Option("--input", help="FASTA of single sequences (symmetry).")] = None,
    batch_size: int = 16,
    base: Annotated[str | None, typer.Option(help="Base model location override.")] = None,
    ray: Annotated[
        bool, typer.Option("--ray", help="Predict as Ray tasks over chunks of the input (implied by --address).")
    ] = False,
    address: ClusterOpt = None,
) -> None:
    """Predict interaction probabilities for pairs, or symmetry classes for sequences, into a TSV."""
    if ray or address:
        from protpeft.deploy.batch import predict_files_on_ray

        n = predict_files_on_ray(model, out, pairs, sequences, input_, batch_size, base=base, address=address)
    else:
        from protpeft.batch_predict import predict_files

        n = predict_files(load_predictor(model, base), out, pairs, sequences, input_, batch_size, progress=True)
    console.print(f"wrote {n} predictions to {out}")


@app.command()
def params(config: ConfigArg, set_: SetOpt = None) -> None:
    """Print total and trainable parameter counts of CONFIG's model as JSON (no weights are loaded)."""
    from protpeft.config import load_config
    from protpeft.models.params import parameter_report

    print_json(parameter_report(load_config(config, set_)))


# --------------------------------------------------------------------------------------------------------------
# data / model


@data_app.command("check")
def data_check(
    pairs: Annotated[Path | None, typer.Option(help="PPI pairs file.")] = None,
    sequences: Annotated[Path | None, typer.Option(help="FASTA for the pairs.")] = None,
    table: Annotated[Path | None, typer.Option(help="Symmetry table.")] = None,
    layout: Annotated[str, typer.Option(help="auto, dscript or gold.")] = "auto",
) -> None:
    """Validate input files without training; exits non-zero listing every problem."""
    from protpeft.data.check import check_inputs

    report = check_inputs(pairs=pairs, sequences=sequences, table=table, layout=layout)
    print_json(report)


@data_app.command("synth")
def data_synth(
    task: Annotated[str, typer.Option(help="The task: ppi or symmetry.")],
    out: Annotated[Path, typer.Option(help="Output directory.")],
    n: Annotated[int | None, typer.Option(help="Examples (default 1200 pairs / 600 sequences).")] = None,
    seed: int = 0,
) -> None:
    """Write a small learnable synthetic dataset in the real file formats."""
    from protpeft.data.synth import write_synthetic
    from protpeft.tasks import TASKS

    if task not in TASKS:
        raise ProtpeftError(f"--task must be one of {', '.join(TASKS)}, not {task!r}")
    paths = write_synthetic(task, out, n=n, seed=seed)  # type: ignore[arg-type]
    print_json({k: str(v) for k, v in paths.items()})


@model_app.command("init-tiny")
def model_init_tiny(
    out: Annotated[Path, typer.Argument(help="Directory to write the checkpoint to.")],
    layers: int = 4,
    hidden: int = 64,
    heads: int = 4,
    intermediate: int = 128,
    seed: int = 0,
) -> None:
    """Write a random-initialised ESM-2-architecture checkpoint with the real ESM tokenizer."""
    from protpeft.models.backbone import init_tiny

    path = init_tiny(out, layers=layers, hidden=hidden, heads=heads, intermediate=intermediate, seed=seed)
    console.print(f"wrote tiny ESM-2 checkpoint to {path}")


# --------------------------------------------------------------------------------------------------------------
# sub-applications of the distributed parts (their modules import Ray/MLflow only inside commands)


def _add_subapps() -> None:
    import importlib

    for module, attr in (
        ("protpeft.trainer.cli", "register"),
        ("protpeft.registry.cli", "register"),
        ("protpeft.tune.cli", "register"),
        ("protpeft.deploy.cli", "register"),
    ):
        try:
            register = getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
            continue
        register(app)


_add_subapps()


def main() -> None:
    try:
        code = app(standalone_mode=False)  # a command's typer.Exit(n) comes back as n in this mode
    except ProtpeftError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as err:
        # usage errors (missing argument, bad option) from the click that typer bundles: duck-typed, since typer
        # ships its own copy of click whose exception classes are not click's
        if hasattr(err, "show") and isinstance(getattr(err, "exit_code", None), int):
            err.show()
            sys.exit(err.exit_code)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
