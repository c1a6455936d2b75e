"""A directory of the driver's disk (a base model given as a local path) made readable on every node: uploaded once
into the run's storage, content-addressed by a fingerprint of its files, and copied from there onto each node
that needs it (once per node, whichever worker gets there first).

On one machine nothing is staged: workers read the driver's directory where it is.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from protpeft.trainer.storage import STAGED_MARKER, RunStorage

__all__ = ["StagedDir", "dir_fingerprint", "stage_dir"]

STAGED_PREFIX = "staged"


def dir_fingerprint(directory: str | os.PathLike) -> str:
    """sha256 over the relative paths and bytes of every file under ``directory`` (sorted): its content address."""
    root = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class StagedDir:
    """A directory in storage (picklable: it travels to the workers with the filesystem object it needs)."""

    storage: RunStorage
    rel: str
    key: str

    @property
    def uri(self) -> str:
        return self.storage.uri_of(self.rel)

    def local_copy(self, root: str | os.PathLike | None = None) -> Path:
        """This node's copy (``<tmp>/protpeft-staged/<key>``), downloaded unless it is there. A file lock lets one
        worker per node download while the others wait; the download goes to a scratch directory renamed into
        place when complete, so a copy cut off midway is never used."""
        base = Path(root) if root is not None else Path(tempfile.gettempdir()) / "protpeft-staged"
        target = base / self.key
        base.mkdir(parents=True, exist_ok=True)
        with FileLock(str(base / f"{self.key}.lock")):
            if not (target / STAGED_MARKER).is_file():
                partial = Path(tempfile.mkdtemp(prefix=f"{self.key}.partial-", dir=base))
                self.storage.download_dir(self.rel, partial)
                shutil.rmtree(target, ignore_errors=True)
                os.replace(partial, target)
        return target


def stage_dir(storage: RunStorage, directory: str | os.PathLike, kind: str = "base") -> StagedDir:
    """Upload ``directory`` to ``<storage>/staged/<kind>-<fingerprint>`` unless a complete copy is there."""
    key = f"{kind}-{dir_fingerprint(directory)}"
    storage.stage_dir(directory, key, STAGED_PREFIX)
    return StagedDir(storage, f"{STAGED_PREFIX}/{key}", key)
