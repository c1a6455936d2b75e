"""``protpeft serve``: parse, call :func:`protpeft.deploy.serve.serve_models`, print.

``protpeft.cli`` calls :func:`register` at import; Ray, torch and MLflow are imported only inside the command body,
so ``protpeft --help`` stays fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["register"]


def serve_command(
    refs: Annotated[
        list[str],
        typer.Argument(help="Registered models: NAME@ALIAS (re-resolved on reload), NAME/VERSION or NAME (latest)."),
    ],
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster to serve on, e.g. auto or HEAD:6379 (default: $RAY_ADDRESS, else a new "
            "local Ray instance)."
        ),  # fmt: skip
    ] = None,
    host: Annotated[str, typer.Option(help="Interface of the HTTP proxy (0.0.0.0: the network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    base: Annotated[str | None, typer.Option(help="Base model location override (directory or hub id).")] = None,
    poll: Annotated[
        float | None,
        typer.Option(
            help="Re-resolve aliases every SECONDS and swap in moved versions (default: only on POST /admin/reload).",
            min=1.0,
        ),  # fmt: skip
    ] = None,
    max_items: Annotated[int, typer.Option(help="Pairs or sequences per request.", min=1)] = 64,
    max_length: Annotated[int, typer.Option(help="Residues per sequence.", min=1)] = 1024,
    letters: Annotated[
        str | None,
        typer.Option(help="Accepted residue letters, e.g. ACDEFGHIKLMNPQRSTVWY (default: ESM-2's alphabet)."),
    ] = None,
    num_cpus: Annotated[float, typer.Option(help="CPUs of the replica (torch threads).", min=0.1)] = 1.0,
    max_batch_size: Annotated[int, typer.Option(help="Requests batched into one model call.", min=1)] = 8,
) -> None:
    """Serve registered models over HTTP until Ctrl-C: POST /v1/models/NAME/predict, GET /v1/models, /docs.

    Example: protpeft serve ppi-lora@champion --port 8000, then
    curl -X POST http://127.0.0.1:8000/v1/models/ppi-lora/predict -H 'Content-Type: application/json'
    -d '{"pairs": [["MKTAYIAKQR", "MSEQNNTEMT"]]}'
    """
    from protpeft.console import console

    from .schemas import Limits
    from .serve import ServerInfo, serve_models

    try:
        extra = {"letters": letters.upper()} if letters else {}
        limits = Limits(max_items=max_items, max_length=max_length, **extra)
    except ValueError as err:
        raise typer.BadParameter(str(err).splitlines()[-1], param_hint="--letters") from None

    def ready(info: ServerInfo) -> None:
        for m in info.models:
            console.print(f"serving {m['ref']} (version {m['version']}, {m['mode']}) at "
                          f"{info.url}/v1/models/{m['name']}/predict", highlight=False)  # fmt: skip
        console.print(f"ready: {info.url} (models: {info.url}/v1/models, API docs: {info.url}/docs); Ctrl-C stops",
                      highlight=False)  # fmt: skip

    serve_models(refs, address=address, host=host, port=port, base=base, poll_seconds=poll, limits=limits,
                 num_cpus=num_cpus, max_batch_size=max_batch_size, on_ready=ready)  # fmt: skip
    console.print("stopped")


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the root app."""
    app.command("serve")(serve_command)
