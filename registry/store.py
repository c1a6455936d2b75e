"""Where runs and registered models live: the tracking URI, the artefact root, and creating the store safely.

Embedded default: ``sqlite:///<project dir>/mlflow.db`` with artefacts under ``<project dir>/mlartifacts`` (absolute,
so they never land in whatever directory a process happens to run in), where the project directory is
``$PROTPEFT_HOME`` or the current working directory. Shared case: ``MLFLOW_TRACKING_URI=http://host:5000`` pointing
at a real ``mlflow server`` (see :mod:`protpeft.registry.server`), which then decides where artefacts go.

A fresh SQLite store opened by several processes at once is corrupted for good (the schema migrations race), so
:func:`ensure_store` creates it under a file lock; launchers call it once on the driver before starting parallel
writers (run-many, Tune trials, concurrent registrations).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = [
    "DB_FILE",
    "HOME_ENV",
    "artifact_root",
    "client",
    "ensure_experiment",
    "ensure_store",
    "project_dir",
    "sqlite_path",
    "tracking_uri",
]

HOME_ENV = "PROTPEFT_HOME"
DB_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
_SERVER_SCHEMES = ("http", "https", "databricks", "uc")
_created: set[str] = set()  # stores this process has already opened once

# MLflow draws a progress bar for every artefact download and sends usage telemetry; a user can turn either back on.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def project_dir() -> Path:
    """``$PROTPEFT_HOME`` or the current working directory, absolute."""
    return Path(os.environ.get(HOME_ENV) or os.getcwd()).expanduser().resolve()


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else the embedded SQLite store of the project directory."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or f"sqlite:///{project_dir() / DB_FILE}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores and in-memory SQLite)."""
    if not uri.startswith("sqlite:"):
        return None
    path = urlparse(uri).path
    if not path or path == "/:memory:":
        return None
    return Path(path[1:]).resolve()  # sqlite:////abs/x.db → /abs/x.db; sqlite:///rel/x.db → rel/x.db


def artifact_root(uri: str) -> Path | None:
    """Absolute local artefact root for a database store; None when a server decides (http, databricks)."""
    if urlparse(uri).scheme in _SERVER_SCHEMES:
        return None
    db = sqlite_path(uri)
    return (db.parent if db is not None else project_dir()) / ARTIFACT_DIR


def _is_database(uri: str) -> bool:
    return urlparse(uri).scheme.split("+")[0] in ("sqlite", "postgresql", "mysql", "mssql")


def ensure_store(uri: str | None = None, default_artifact_root: str | None = None) -> str:
    """Create (or just open) the store at ``uri`` from this process alone; return the URI.

    ``default_artifact_root`` is where the store's ``Default`` experiment keeps artefacts when this call creates
    it (a server passes ``mlflow-artifacts:/``); protpeft's own experiments get theirs in :func:`ensure_experiment`.

    A database store is built once, which runs MLflow's schema migrations; for SQLite under an exclusive file lock
    beside the database, so any number of protpeft processes may call this at once. Server URIs are left alone.
    """
    uri = uri or tracking_uri()
    if uri in _created or not _is_database(uri):
        return uri
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    root = default_artifact_root or str(artifact_root(uri))
    db = sqlite_path(uri)
    if db is None:
        SqlAlchemyStore(uri, root)
    else:
        db.parent.mkdir(parents=True, exist_ok=True)
        with open(db.with_name(db.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            SqlAlchemyStore(uri, root)
    _created.add(uri)
    return uri


def client(uri: str | None = None) -> MlflowClient:
    """An ``MlflowClient`` for tracking and registry on the same (created) store."""
    from mlflow import MlflowClient

    uri = ensure_store(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or uri)


def ensure_experiment(mlflow_client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created when missing (with an absolute artefact location on local stores)."""
    from mlflow.exceptions import MlflowException

    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    root = artifact_root(mlflow_client.tracking_uri)
    location = (root / name).as_uri() if root is not None else None
    try:
        return mlflow_client.create_experiment(name, artifact_location=location)
    except MlflowException:  # another process created it between our two calls
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id
