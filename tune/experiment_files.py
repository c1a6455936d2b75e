"""Where a Tune experiment keeps what it needs: the local experiment directory on the driver, and — when the search
names a storage (``--storage`` or the base config's ``engine.storage``) — ``<storage>/<experiment>``, which then holds
everything ``tune --resume`` needs, so an experiment resumes from a machine or directory that never saw it.

With a storage::

    <storage>/<experiment>/          Ray Tune's experiment (tuner.pkl, experiment_state-*.json, a folder per trial)
      train/train-trial_id=<id>/     each trial's Ray Train run: checkpoints and the published artefact
      protpeft/                      copies of protpeft's files: search.json, ledger/, attempts.jsonl, trials.json

Without one, Ray Tune's experiment and ``train/`` are in the local experiment directory itself. Either way the local
directory holds protpeft's files (``search.json``, ``ledger/``, ``attempts.jsonl``, ``trials.json``), the trials' run
directories (``trials/trial-<id>``) and the report.

protpeft's files are written locally first and copied to storage as they are written: ``search.json`` when the
experiment starts, the ledger as each trial ends, ``attempts.jsonl`` and ``trials.json`` at the end of each session. A
resume copies back those missing locally; the run directories of finished trials are pulled from their artefacts in
storage (:mod:`protpeft.tune.outcome`).
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protpeft.trainer.storage import RunStorage

__all__ = [
    "ATTEMPTS_FILE",
    "ENDS_FILE",
    "SEARCH_FILE",
    "SNAPSHOT_FILE",
    "TRIALS_FILE",
    "TUNER_FILE",
    "ExperimentFiles",
    "read_json",
    "write_json",
]

SEARCH_FILE = "search.json"
TRIALS_FILE = "trials.json"
TUNER_FILE = "tuner.pkl"
"""Ray Tune's record of the experiment, written when it starts: its presence means there is something to resume."""
LEDGER_DIR = "ledger"
"""Where the ledger writes: not the experiment's top level, whose ``*.json`` files Tune downloads into its staging
directory on restore and uploads again later, overwriting what was written meanwhile."""
ENDS_FILE = f"{LEDGER_DIR}/trial_ends.json"
SNAPSHOT_FILE = f"{LEDGER_DIR}/trial_snapshot.json"
ATTEMPTS_FILE = "attempts.jsonl"
COPIED = (SEARCH_FILE, ENDS_FILE, SNAPSHOT_FILE, ATTEMPTS_FILE, TRIALS_FILE)
"""protpeft's files that storage keeps a copy of, under :data:`COPY_DIR`."""
COPY_DIR = "protpeft"
TRAIN_DIR = "train"


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


@dataclass(frozen=True)
class ExperimentFiles:
    """An experiment's local directory and, optionally, its place in storage (picklable: the ledger callback and
    the trials carry it, with the storage's credentials)."""

    local: Path
    storage: RunStorage | None = None
    """``<storage>/<experiment>``; None keeps the whole experiment in ``local``."""

    @classmethod
    def at(cls, local: Path, storage: str | None) -> ExperimentFiles:
        """``local`` and, for a storage location (parsed here, with this process's credentials), its
        ``<storage>/<local.name>``."""
        return cls(local, RunStorage.parse(storage).child(local.name) if storage else None)

    @property
    def where(self) -> str:
        """Where the experiment is, as the user would name it."""
        return self.storage.uri if self.storage is not None else str(self.local)

    # ---- protpeft's files ---------------------------------------------------------------------------------------
    def write(self, rel: str, data: Any) -> None:
        """Write the JSON file ``rel`` locally, then its copy in storage."""
        write_json(self.local / rel, data)
        self.upload(rel)

    def upload(self, *rels: str) -> None:
        """Copy the local files ``rels`` (those that exist) to storage."""
        if self.storage is None:
            return
        for rel in rels:
            path = self.local / rel
            if path.is_file():
                self.storage.write_bytes(f"{COPY_DIR}/{rel}", path.read_bytes())

    def download_missing(self) -> None:
        """Copy back from storage protpeft's files that are not in the local directory (an experiment resumed
        elsewhere); a local file, as new as its copy or newer, wins."""
        if self.storage is None:
            return
        for rel in COPIED:
            target = self.local / rel
            data = None if target.exists() else self.storage.read_bytes(f"{COPY_DIR}/{rel}")
            if data is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)

    def stored(self, rel: str) -> bool:
        """Whether storage holds a copy of ``rel``."""
        return self.storage is not None and self.storage.exists(f"{COPY_DIR}/{rel}")

    # ---- Ray Tune and Ray Train ---------------------------------------------------------------------------------
    def started(self) -> bool:
        """Whether Ray Tune started this experiment (its ``tuner.pkl`` is where Tune keeps the experiment)."""
        if self.storage is not None:
            return self.storage.exists(TUNER_FILE)
        return (self.local / TUNER_FILE).is_file()

    def tune_location(self) -> dict[str, Any]:
        """``name``, ``storage_path`` (and ``storage_filesystem``) for Tune's ``RunConfig``."""
        if self.storage is None:
            return {"name": self.local.name, "storage_path": str(self.local.parent)}
        parent = posixpath.dirname(self.storage.root)
        return {"name": self.local.name, "storage_path": parent, "storage_filesystem": self.storage.filesystem}

    def tune_restore(self) -> dict[str, Any]:
        """``path`` (and ``storage_filesystem``) for ``Tuner.restore``."""
        if self.storage is None:
            return {"path": str(self.local)}
        return {"path": self.storage.root, "storage_filesystem": self.storage.filesystem}

    def train_storage(self) -> RunStorage:
        """Where the trials' Ray Train runs keep their checkpoints and artefacts: ``<experiment>/train``."""
        if self.storage is not None:
            return self.storage.child(TRAIN_DIR)
        return RunStorage.parse(self.local / TRAIN_DIR)
