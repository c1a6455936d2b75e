"""A shared ``mlflow server`` for a lab: SQLite or PostgreSQL backend, artefacts proxied through the server.

Clients then set ``MLFLOW_TRACKING_URI=http://<host>:<port>``; their artefacts are uploaded through the server to
``--artifacts-destination``, so they need no access to the server's disk. The equivalent one-liner::

    mlflow server --backend-store-uri sqlite:///$PWD/mlflow.db --artifacts-destination $PWD/mlartifacts \\
        --serve-artifacts --host 127.0.0.1 --port 5000

The server runs several worker processes; :class:`MlflowServer` starts it in its own process group and stops the
whole group. A fresh SQLite database is created from this process first, because the workers would otherwise
migrate it concurrently and corrupt it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from protpeft.process_groups import group_alive, wait_groups_gone

from . import store
from .refs import RegistryError

__all__ = ["MlflowServer", "server_command", "start_server"]


# uvicorn's supervisor kills workers that miss a 5 s health check, which a worker still importing MLflow on a busy
# machine does (an endless restart loop); open client keep-alive connections would also delay shutdown.
UVICORN_OPTS = "--timeout-worker-healthcheck 120 --timeout-graceful-shutdown 5"


def server_command(
    backend_uri: str, artifacts_destination: str, host: str, port: int, workers: int = 2,
    extra: Sequence[str] = (),
) -> list[str]:  # fmt: skip
    """The ``mlflow server`` command line (run with this interpreter, so it uses this environment's MLflow)."""
    return [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
        "--artifacts-destination", artifacts_destination, "--serve-artifacts",
        "--host", host, "--port", str(port), "--workers", str(workers), "--uvicorn-opts", UVICORN_OPTS, *extra,
    ]  # fmt: skip


@dataclass
class MlflowServer:
    """A running ``mlflow server`` process group."""

    process: subprocess.Popen
    url: str
    log_path: Path | None = None
    command: list[str] = field(default_factory=list)
    artifacts_destination: str = ""

    def wait_ready(self, timeout: float = 90.0) -> MlflowServer:
        """Poll ``/health`` until it answers 200.

        Raises:
            RegistryError: the server exited or did not answer in time (with the tail of its log).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RegistryError(f"mlflow server exited with code {self.process.returncode}{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RegistryError(f"mlflow server at {self.url} did not become ready in {timeout:.0f} s{self._log_tail()}")

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        lines = self.log_path.read_text(errors="replace").splitlines()[-15:]
        return "; last log lines:\n" + "\n".join(lines)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL whatever is left after ``timeout`` seconds."""
        if self.process.poll() is not None and not group_alive(self.process.pid):
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            if wait_groups_gone([self.process.pid], wait, self.process.poll, every=0.1):
                break
        self.process.poll()

    def __enter__(self) -> MlflowServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(
    backend_uri: str | None = None,
    artifacts_destination: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int = 2,
    log_path: str | Path | None = None,
    extra_args: Sequence[str] = (),
    job_execution: bool = False,
) -> MlflowServer:
    """Start ``mlflow server`` in a new process group (not waiting for it; call :meth:`MlflowServer.wait_ready`).

    Defaults: the project's ``mlflow.db`` and ``mlartifacts/`` (see :mod:`protpeft.registry.store`). A
    ``postgresql://user:pw@host/db`` backend needs the ``psycopg2`` driver installed. ``job_execution`` turns on
    MLflow 3's server-side job runner (GenAI evaluation jobs, trace rollups), which protpeft does not use and which
    starts about eight more Python processes.
    """
    home = store.project_dir()
    backend_uri = backend_uri or f"sqlite:///{home / store.DB_FILE}"
    destination = str(artifacts_destination or home / store.ARTIFACT_DIR)
    if "://" not in destination:
        destination = str(Path(destination).expanduser().resolve())
        Path(destination).mkdir(parents=True, exist_ok=True)
    # create a SQLite store here, before the server's workers open it concurrently
    store.ensure_store(backend_uri, "mlflow-artifacts:/")
    command = server_command(backend_uri, destination, host, port, workers, extra_args)
    log = Path(log_path) if log_path else None
    out = open(log, "ab") if log else None  # noqa: SIM115 - handed to the child, closed below
    try:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": str(job_execution).lower()}
        process = subprocess.Popen(command, stdout=out or None, stderr=subprocess.STDOUT if out else None,
                                   stdin=subprocess.DEVNULL, start_new_session=True, env=env)  # fmt: skip
    finally:
        if out is not None:
            out.close()
    url_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return MlflowServer(process, f"http://{url_host}:{port}", log, command, destination)
