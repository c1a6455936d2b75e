"""What every command line module shares: the consoles, JSON output and the option types declared once.

The root CLI (:mod:`protpeft.cli`) and the sub-CLIs (trainer, registry, tune, deploy) import from here, never from
each other.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

__all__ = ["ClusterOpt", "ConfigArg", "JobsAddressOpt", "SetOpt", "StorageOpt", "console", "err_console", "print_json"]

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
