"""``protpeft submit`` and ``protpeft jobs``: any protpeft command as a Ray job, through the Jobs API (HTTP).

The entrypoint is ``protpeft <args>``, so protpeft must be installed on the cluster (in the image or the nodes'
environment). By default the current directory is shipped as the job's ``working_dir`` so configs and data named
by relative paths travel with the job (Ray honours ``.gitignore`` and the excludes below, and caps the upload at
500 MiB); ``--no-working-dir`` skips the upload when the files already sit on the cluster's shared storage. The
code that runs is always the cluster's installed protpeft, never the uploaded copy.

Token authentication (Ray 2.60 clusters may require it): the token is read from ``$RAY_AUTH_TOKEN``, else the file
``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token`` when ``RAY_AUTH_MODE=token``, and sent as an
``Authorization: Bearer`` header. It is never printed: error messages are scrubbed of it.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from protpeft.errors import ProtpeftError

__all__ = [
    "auth_token",
    "job_client",
    "job_env",
    "job_logs",
    "job_status",
    "list_jobs",
    "stop_job",
    "submit_job",
    "tail_logs",
]

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
WORKING_DIR_EXCLUDES = [
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    "*.egg-info",
    "runs",
    "ray_results",
    "mlruns",
    "mlartifacts",
    "mlflow.db",
    ".pytest_cache",
    ".ruff_cache",
    "benchmarks/results",
]


class JobsError(ProtpeftError):
    """A Jobs API call failed; the message never contains the auth token."""


def auth_token() -> str | None:
    """The cluster token to send, or None (see the module docstring for where it is looked up).

    Raises:
        JobsError: a token source is named but unreadable, or token mode is on and no token is found.
    """
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    token_mode = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
    path = Path(named).expanduser() if named else Path.home() / ".ray" / "auth_token" if token_mode else None
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError:
        raise JobsError(
            f"token authentication: cannot read the token file {path} "
            "(set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH to the cluster's token)"
        ) from None
    if not token:
        raise JobsError(f"token authentication: the token file {path} is empty")
    return token


def resolve_jobs_address(address: str | None) -> str:
    """``--address``, else ``$RAY_API_SERVER_ADDRESS`` / an http ``$RAY_ADDRESS``, else the local dashboard."""
    if address:
        return address if "://" in address else f"http://{address}"
    env = os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS", "")
    return env if env.startswith(("http://", "https://")) else DEFAULT_ADDRESS


class _Client:
    """JobSubmissionClient calls with the token attached and errors turned into one scrubbed line."""

    def __init__(self, address: str | None) -> None:
        self.address = resolve_jobs_address(address)
        self.token = auth_token()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        self.client = self._call(_make_client, self.address, headers)

    def _scrub(self, text: str) -> str:
        return text.replace(self.token, "***") if getattr(self, "token", None) else text

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ProtpeftError, StopAsyncIteration):
            raise
        except Exception as err:
            message = " ".join(self._scrub(str(err)).split())
            if "Authentication required" in message or "Missing authentication token" in message:
                message = (
                    "the cluster requires token authentication: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN "
                    "(or RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token)"
                )
            elif "Invalid authentication token" in message or "403" in message.split(":")[0]:
                message = "the cluster rejected the authentication token"
            elif len(message) > 300:
                message = message[:300] + "…"
            raise JobsError(f"{self.address}: {message}") from None

    def __getattr__(self, name: str):
        method = getattr(self.client, name)
        return lambda *args, **kwargs: self._call(method, *args, **kwargs)


def _make_client(address: str, headers: dict[str, str] | None):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address, headers=headers)


def job_client(address: str | None = None) -> _Client:
    return _Client(address)


def job_env(items: list[str], environ: dict[str, str] | None = None) -> dict[str, str]:
    """``--env`` items → the job's environment: ``NAME=VALUE``, or ``NAME`` for this process's value.

    Raises:
        JobsError: a NAME not set here, a malformed item, or the Ray auth token (the cluster has its own).
    """
    environ = dict(os.environ) if environ is None else environ
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not name or not name.replace("_", "a").isalnum() or name[0].isdigit():
            raise JobsError(f"--env {item}: expected NAME=VALUE or NAME")
        if name.startswith("RAY_AUTH"):
            raise JobsError(f"--env {name}: the job must not carry the Ray auth token; the cluster has its own")
        if not sep:
            if name not in environ:
                raise JobsError(f"--env {name}: {name} is not set here; pass --env {name}=VALUE")
            value = environ[name]
        out[name] = value
    return out


def submit_job(
    args: list[str],
    *,
    address: str | None = None,
    working_dir: str | Path | None = ".",
    submission_id: str | None = None,
    env_vars: dict[str, str] | None = None,
) -> str:
    """Submit ``protpeft <args>`` as a Ray job; returns its submission id.

    Args:
        args: the protpeft command line, e.g. ``["train", "configs/x.yaml", "--set", "optim.lr=1e-4"]``.
        working_dir: directory shipped as the job's working directory (None: no upload).
        env_vars: extra environment for the job (never put the auth token here; the cluster has its own).
    """
    if args and args[0] == "protpeft":
        args = args[1:]
    if not args:
        raise JobsError("nothing to submit: give a protpeft command after --, e.g. `protpeft submit -- train x.yaml`")
    runtime_env: dict[str, Any] = {}
    if working_dir is not None:
        directory = Path(working_dir).expanduser().resolve()
        if not directory.is_dir():
            raise JobsError(f"--working-dir {working_dir}: no such directory")
        runtime_env.update(working_dir=str(directory), excludes=WORKING_DIR_EXCLUDES)
    if env_vars:
        runtime_env["env_vars"] = dict(env_vars)
    client = job_client(address)
    return client.submit_job(
        entrypoint="protpeft " + shlex.join(args), runtime_env=runtime_env or None, submission_id=submission_id
    )


def list_jobs(address: str | None = None) -> list[dict[str, Any]]:
    """Every job of the cluster, oldest first: id, status, entrypoint, start/end time, message."""
    jobs = job_client(address).list_jobs()
    rows = [
        {
            "submission_id": j.submission_id or j.job_id,
            "status": str(getattr(j.status, "value", j.status)),
            "entrypoint": j.entrypoint,
            "start_time": j.start_time,
            "end_time": j.end_time,
            "message": j.message,
        }
        for j in jobs
    ]
    return sorted(rows, key=lambda r: r["start_time"] or 0)


def job_status(address: str | None, job_id: str, *, wait: bool = False, timeout_s: float | None = None) -> str:
    """The job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED); with ``wait``, once it has ended."""
    client = job_client(address)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = str(getattr(client.get_job_status(job_id), "value", "")) or "UNKNOWN"
        if not wait or status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise JobsError(f"job {job_id} still {status} after {timeout_s:.0f}s")
        time.sleep(1.0)


def job_logs(address: str | None, job_id: str) -> str:
    return job_client(address).get_job_logs(job_id)


def tail_logs(address: str | None, job_id: str) -> Iterator[str]:
    """Log chunks as the job writes them, until it ends."""
    import asyncio

    client = job_client(address)
    loop = asyncio.new_event_loop()
    agen = client.client.tail_job_logs(job_id)
    try:
        while True:
            try:
                yield client._call(loop.run_until_complete, agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.close()


def stop_job(address: str | None, job_id: str) -> bool:
    """Ask the cluster to stop the job; False when it had already ended."""
    return bool(job_client(address).stop_job(job_id))
