"""``protpeft serve``: parse, call :func:`protpeft.deploy.serve.serve_models`, print.

``protpeft.cli`` calls :func:`register` at import; Ray, torch and MLflow are imported only inside the command body,
so ``protpeft --help`` stays fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from .embedding_lru import DEFAULT_EMBEDDING_CACHE_SIZE
from .serve import DEFAULT_FORWARD_BATCH

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
    num_cpus: Annotated[
        float | None,
        typer.Option(
            help="CPUs of the replica, which torch's threads use (default: all CPUs of the largest node).", min=0.1
        ),
    ] = None,
    max_batch_size: Annotated[
        int,
        typer.Option(
            help="Requests (not examples) one @serve.batch call collects before handing them to the model "
            "thread, which merges whatever batches wait for it.",
            min=1,
        ),
    ] = 8,
    forward_batch: Annotated[
        int,
        typer.Option(
            help="Sequences per forward call of a backbone (rows of different adapters may share one). Small is "
            "fastest on CPU (less padding); raise it on an accelerator.",
            min=1,
        ),
    ] = DEFAULT_FORWARD_BATCH,
    forward_threads: Annotated[
        int | None,
        typer.Option(help="Forward calls run concurrently, sharing the replica's CPUs (default: one per CPU).", min=1),
    ] = None,
    embedding_cache_size: Annotated[
        int | None,
        typer.Option(
            help="Pooled protein representations kept per replica (LRU), so a protein seen before is not encoded "
            f"again; exact (same answers). 0 turns it off. [default: {DEFAULT_EMBEDDING_CACHE_SIZE}]",
            min=0,
        ),
    ] = None,
    admin_token: Annotated[
        str | None,
        typer.Option(
            envvar="PROTPEFT_ADMIN_TOKEN",
            show_envvar=True,
            help="Bearer token /admin/* requires (default: a random one, printed once at start).",
        ),
    ] = None,
    api_token: Annotated[
        str | None,
        typer.Option(
            envvar="PROTPEFT_API_TOKEN",
            show_envvar=True,
            help="Bearer token the /v1 endpoints require (default: they are open).",
        ),
    ] = None,
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
        if info.generated_admin_token:
            console.print(f"admin token (for /admin/*; shown once, set --admin-token or PROTPEFT_ADMIN_TOKEN to "
                          f"choose it): {info.generated_admin_token}", highlight=False, soft_wrap=True)  # fmt: skip
        console.print(f"replica: {info.num_cpus:g} CPUs, {info.forward_threads} forward threads of "
                      f"{info.forward_batch} sequence(s), embedding cache {info.embedding_cache_size} entries; "
                      f"metrics: {info.url}/metrics", highlight=False)  # fmt: skip
        console.print(f"ready: {info.url} (models: {info.url}/v1/models, API docs: {info.url}/docs); Ctrl-C stops",
                      highlight=False)  # fmt: skip

    serve_models(refs, address=address, host=host, port=port, base=base, poll_seconds=poll, limits=limits,
                 num_cpus=num_cpus, max_batch_size=max_batch_size, forward_batch=forward_batch,
                 forward_threads=forward_threads, embedding_cache_size=embedding_cache_size,
                 admin_token=admin_token, api_token=api_token,
                 on_ready=ready)  # fmt: skip
    console.print("stopped")


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the root app."""
    app.command("serve")(serve_command)
