"""What every command line module shares: the consoles, JSON output and the option types declared once.

The root CLI (:mod:`protpeft.cli`) and the sub-CLIs (trainer, registry, tune, deploy) import from here, never from
each other.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

__all__ = [
    "ClusterOpt",
    "ConfigArg",
    "JobsAddressOpt",
    "SetOpt",
    "StorageOpt",
    "VERBOSE_ENV",
    "VerboseOpt",
    "console",
    "err_console",
    "print_json",
    "set_verbosity",
    "verbosity",
]

# Tables stay readable when output goes to a file or `make`'s log (Rich assumes 80 columns there).
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


ConfigArg = Annotated[Path, typer.Argument(help="Run config (YAML).", exists=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key, e.g. --set optim.lr=3e-4 (repeatable)."),
]
ClusterOpt = Annotated[
    str | None,
    typer.Option("--address", help="Ray cluster to run on (default: $RAY_ADDRESS, else a new local Ray instance)."),
]
"""The Ray cluster a command joins (``ray.init(address=...)``)."""
StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="Where checkpoints and artefacts go (engine.storage): a directory, shared by every node on a "
        "multi-node cluster, or s3://BUCKET/PREFIX (endpoint and keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY). Default: OUTPUT_DIR/ray_results.",
    ),
]
"""Ray Train's storage for a run's checkpoints and artefact."""
JobsAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="Ray dashboard / Jobs API, e.g. http://HEAD:8265 (default: $RAY_ADDRESS if it "
        "is http, else http://127.0.0.1:8265).",
    ),
]
"""The Ray Jobs API (an HTTP address) that ``submit`` and ``jobs`` talk to: not the cluster address above."""

VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", help="Also show Ray's own output (workers, Train controller, checkpoints) and library logs."
    ),
]

VERBOSE_ENV = "PROTPEFT_VERBOSE"
"""``1``: Ray's own lines reach the console; ``0``: only protpeft's progress and errors; unset: Ray's defaults. An
environment variable, so that a local Ray instance and a submitted job (``protpeft submit --verbose``) inherit it."""


def set_verbosity(verbose: bool) -> None:
    """What a command's ``--verbose`` says, for everything started from this process. Without the flag the console
    stays quiet unless an outer process asked for verbose (a job submitted with ``--verbose``); quiet also lowers
    MLflow's own logging (store creation, migrations) to warnings."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    else:
        os.environ.setdefault(VERBOSE_ENV, "0")
    if verbosity() is False:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


def verbosity() -> bool | None:
    """True (``--verbose``), False (quiet) or None (no command chose: library defaults)."""
    value = os.environ.get(VERBOSE_ENV, "").strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    return None
