"""``protpeft cache ls|du|clear``: the frozen-mode embedding caches and the LoRA prefix caches on this machine.

Both live under one root (``data.cache_dir``, else $PROTPEFT_CACHE/embeddings, else
~/.cache/protpeft/embeddings), one directory per key: ``FINGERPRINT-POOLING-cropN`` for embeddings,
``prefix-FINGERPRINT-kK-cropN-DTYPE`` for prefix states.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from protpeft.console import console, print_json

__all__ = ["cache_app", "cache_dirs"]

cache_app = typer.Typer(help="Show and clear the embedding and prefix caches.", no_args_is_help=True)

DirOpt = Annotated[
    Path | None, typer.Option("--dir", help="Cache root (default: $PROTPEFT_CACHE/embeddings or ~/.cache/protpeft).")
]
KindOpt = Annotated[str, typer.Option("--kind", help="all, embedding (frozen mode) or prefix (LoRA's frozen layers).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Kind = Literal["embedding", "prefix"]


def cache_dirs(root: Path | None = None, kind: str = "all") -> list[dict[str, Any]]:
    """One row per cache key directory under the root: kind, key, entries (sequences), bytes, path."""
    from safetensors import safe_open

    from protpeft.prefix_cache import PREFIX_DIR
    from protpeft.shards import ShardDir, cache_root

    if kind not in ("all", "embedding", "prefix"):
        from protpeft.errors import ProtpeftError

        raise ProtpeftError(f"--kind {kind!r}: expected all, embedding or prefix")
    base = cache_root(root)
    rows = []
    for path in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
        shards = ShardDir(path)
        if not shards.shards():
            continue
        found: Kind = "prefix" if path.name.startswith(PREFIX_DIR) else "embedding"
        if kind not in ("all", found):
            continue
        entries = 0
        for shard in shards.shards():
            with safe_open(shard, framework="pt") as fh:
                entries += len(fh.keys())
        key = path.name.removeprefix(PREFIX_DIR)
        rows.append({"kind": found, "key": key, "entries": entries, "bytes": shards.size_bytes(), "path": str(path)})
    return rows


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@cache_app.command("ls")
def ls(directory: DirOpt = None, kind: KindOpt = "all", as_json: JsonOpt = False) -> None:
    """List the caches: one line per key (backbone fingerprint, pooling or prefix depth, crop, dtype)."""
    from rich.table import Table

    rows = cache_dirs(directory, kind)
    if as_json:
        print_json(rows)
        return
    table = Table("kind", "key", "sequences", "size", "path")
    for row in rows:
        table.add_row(row["kind"], row["key"], str(row["entries"]), _size(row["bytes"]), row["path"])
    console.print(table)


@cache_app.command("du")
def du(directory: DirOpt = None, as_json: JsonOpt = False) -> None:
    """Disk use per kind of cache and in total."""
    rows = cache_dirs(directory)
    totals = {k: sum(r["bytes"] for r in rows if r["kind"] == k) for k in ("embedding", "prefix")}
    totals["total"] = sum(totals.values())
    if as_json:
        print_json(totals)
        return
    for name, size in totals.items():
        console.print(f"{name:<10} {_size(size):>10}", highlight=False)


@cache_app.command("clear")
def clear(
    directory: DirOpt = None,
    kind: KindOpt = "all",
    key: Annotated[str | None, typer.Option(help="Only keys containing this text (e.g. a fingerprint).")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete caches (each under its file lock, so no job is filling it meanwhile)."""
    import shutil

    from protpeft.shards import ShardDir

    rows = [r for r in cache_dirs(directory, kind) if key is None or key in r["key"]]
    if not rows:
        console.print("nothing to clear")
        return
    total = _size(sum(r["bytes"] for r in rows))
    if not yes and not typer.confirm(f"delete {len(rows)} cache(s), {total}?"):
        raise typer.Abort()
    for row in rows:
        path = Path(row["path"])
        with ShardDir(path).lock():
            for item in path.iterdir():
                if item.name != ".lock":
                    shutil.rmtree(item) if item.is_dir() else item.unlink()
        shutil.rmtree(path, ignore_errors=True)
    console.print(f"deleted {len(rows)} cache(s), {total}", highlight=False)
