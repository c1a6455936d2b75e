"""A Ray Train run's place in storage: where its checkpoints and artefact go, how ``--resume`` finds them, how a new
run starts clean there, and how the driver brings the finished artefact home.

Layout: ``<storage>/<run name>/`` is Ray Train's run directory (``checkpoint_manager_snapshot.json``, one
``step-NNNNNNNN`` checkpoint per report with files, and ``artifact``, the finished run's artefact). ``<storage>`` is
``engine.storage`` / ``--storage`` (a directory, or ``s3://bucket/prefix``), by default ``<output_dir>/ray_results``
beside the run directories. The driver's run directory (``<output_dir>/<name>``) is filled from ``artifact``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from protpeft.artifact import ARTIFACT_FILE
from protpeft.config import RunConfig
from protpeft.errors import ProtpeftError
from protpeft.trainer.checkpoints import STATE_FILE
from protpeft.trainer.fresh_run import start_afresh
from protpeft.trainer.ray_worker import ARTIFACT_CHECKPOINT, is_artifact
from protpeft.trainer.storage import RunStorage

__all__ = [
    "SNAPSHOT_FILE",
    "STORAGE_DIR",
    "copy_artifact",
    "fetch_artifact",
    "list_runs",
    "prepare_run",
    "pull_run",
    "resolve_resume",
    "run_storage",
]

STORAGE_DIR = "ray_results"
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
"""Ray Train V2's record of a run's registered checkpoints; its presence makes Ray restore the run."""


def run_storage(cfg: RunConfig, location: str | Path | None = None) -> RunStorage:
    """``location`` (``--storage``), else ``engine.storage``, else ``<output_dir>/ray_results``."""
    return RunStorage.parse(location or cfg.engine.storage or Path(cfg.output_dir) / STORAGE_DIR)


def resolve_resume(resume: str | Path, storage: RunStorage, name: str) -> tuple[RunStorage, str, Path | None]:
    """What ``--resume`` names → ``(storage, ray_run_name, explicit_checkpoint)``.

    Accepted: one checkpoint directory on this machine (``step-N`` holding ``train_state.json``), a Ray run
    directory (holding Ray's checkpoint snapshot), or a protpeft run directory or run name, whose checkpoints are
    found by its name in ``storage`` (an object store too: the run directory need not exist here) or, for a local
    run directory, in the ``ray_results`` beside it.

    Raises:
        ProtpeftError: nothing to resume from there.
    """
    path = Path(resume).expanduser().resolve()
    if (path / STATE_FILE).is_file():
        return storage, name, path
    candidates = [(storage, path.name)]
    if path.is_dir():
        candidates = [(RunStorage.parse(path.parent), path.name), *candidates]
        candidates.append((RunStorage.parse(path.parent / STORAGE_DIR), path.name))
    for where, run_name in candidates:
        if where.exists(f"{run_name}/{SNAPSHOT_FILE}"):
            return where, run_name, None
    looked = ", ".join(dict.fromkeys(where.uri_of(run_name) for where, run_name in candidates))
    raise ProtpeftError(
        f"--resume {resume}: no checkpoints found (no {STATE_FILE} there, no Ray {SNAPSHOT_FILE} in {looked}); "
        "a run that stopped before its first checkpoint cannot be resumed"
    )


def prepare_run(
    cfg: RunConfig, storage: RunStorage, name: str, resume: str | Path | None
) -> tuple[RunStorage, str, Path | None]:
    """Resolve ``--resume`` (see :func:`resolve_resume`), or start afresh: the run directory's old summary, logs
    and checkpoints and the run's old Ray storage removed (Ray Train V2 would otherwise silently resume from it).
    An explicit checkpoint wins over the run's own record: Ray then starts a fresh record (later restarts resume
    from what this run reports)."""
    if resume is None:
        start_afresh(cfg.run_dir)
        storage.remove(name)
        return storage, name, None
    storage, name, explicit = resolve_resume(resume, storage, name)
    if explicit is not None:
        storage.remove(f"{name}/{SNAPSHOT_FILE}")
    return storage, name, explicit


def fetch_artifact(result: Any, run_dir: Path) -> Path:
    """Copy the finished run's artefact (Ray's last checkpoint, wherever its storage is) into ``run_dir`` here.

    Raises:
        ProtpeftError: the run ended without publishing an artefact.
    """
    checkpoint = result.checkpoint
    if not is_artifact(checkpoint):
        raise ProtpeftError(f"the run ended without its artefact in storage (last checkpoint: {checkpoint})")
    return copy_artifact(checkpoint.filesystem, checkpoint.path, run_dir)


def pull_run(storage: RunStorage, name: str, run_dir: Path) -> Path:
    """The run ``name``'s artefact from ``storage`` into ``run_dir`` (``protpeft runs pull``), on any machine.

    Raises:
        ProtpeftError: no finished run of that name in the storage.
    """
    rel = f"{name}/{ARTIFACT_CHECKPOINT}"
    if not storage.exists(f"{rel}/{ARTIFACT_FILE}"):
        raise ProtpeftError(
            f"no finished run {name!r} in {storage.uri} (no {storage.uri_of(rel)}/{ARTIFACT_FILE}); "
            "`protpeft runs ls --storage ...` lists the runs there"
        )
    return copy_artifact(storage.filesystem, storage.path(rel), run_dir)


def list_runs(storage: RunStorage) -> list[dict[str, Any]]:
    """The runs in ``storage``: name, and whether it finished (its artefact is there)."""
    selector = pafs.FileSelector(storage.path(), allow_not_found=True)
    runs = []
    for info in storage.filesystem.get_file_info(selector):
        if info.type == pafs.FileType.Directory and storage.exists(f"{info.base_name}/{SNAPSHOT_FILE}"):
            finished = storage.exists(f"{info.base_name}/{ARTIFACT_CHECKPOINT}/{ARTIFACT_FILE}")
            runs.append({"name": info.base_name, "finished": finished, "uri": storage.uri_of(info.base_name)})
    return sorted(runs, key=lambda run: run["name"])


def copy_artifact(filesystem: pafs.FileSystem, path: str, run_dir: Path) -> Path:
    """Copy an artefact directory at ``path`` on ``filesystem`` into the local ``run_dir`` (created; files there
    are replaced), ``protpeft.json`` last, as when it is written in place."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    incoming = Path(tempfile.mkdtemp(prefix=".incoming-", dir=run_dir))
    try:
        pafs.copy_files(
            path, str(incoming.resolve()), source_filesystem=filesystem, destination_filesystem=pafs.LocalFileSystem()
        )
        for item in sorted(incoming.iterdir(), key=lambda p: p.name == ARTIFACT_FILE):
            target = run_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    return run_dir
