"""``protpeft submit`` / ``protpeft jobs`` against a real Ray head on 127.0.0.1 with token authentication on:
submit a training job, wait for it, read its logs; the token is required and never printed. The run's base model,
shipped in the working dir, is found again on the driver after Ray's copy of that dir is gone.

The head runs in its own process group and temp dir and is stopped by killing that group (never ``ray stop``,
which would stop every Ray instance on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from registry_helpers import wait_http

from protpeft.trainer.ray_cluster import free_port

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
HEAD_PORT_FLAGS = (
    "--port",
    "--ray-client-server-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--metrics-export-port",
    "--runtime-env-agent-port",
    "--node-manager-port",
    "--object-manager-port",
)
"""Every port the head binds, given explicitly: Ray's defaults would collide with other clusters on the machine."""


def _kill_group(proc: subprocess.Popen, temp_dir: str) -> None:
    """SIGTERM then SIGKILL the head's process group, then any process still naming its temp dir."""
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    for entry in Path("/proc").iterdir():  # Ray daemons that left the group (setsid) still name the temp dir
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if temp_dir.encode() in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def _start_head(token: str) -> tuple[subprocess.Popen, str, int, dict, object]:
    """One ``ray start --head`` on distinct fresh ports; returns (process, temp dir, dashboard port, env, log)."""
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths must stay under 107 chars
    ports: set[int] = set()
    while len(ports) < 1 + len(HEAD_PORT_FLAGS):  # free_port() may hand out the same port twice
        ports.add(free_port())
    dashboard, *others = sorted(ports)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        # Ray's processes find this cluster's state API by it, not by looking for the machine's running clusters
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard}",
    }
    env.pop("RAY_ADDRESS", None)
    command = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        "--dashboard-host=127.0.0.1",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        "--object-store-memory=300000000",
        f"--dashboard-port={dashboard}",
        *(f"{flag}={port}" for flag, port in zip(HEAD_PORT_FLAGS, others, strict=True)),
    ]
    log = open(Path(temp_dir) / "ray-start.log", "w")  # noqa: SIM115 - closed by the caller
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, temp_dir, dashboard, env, log


@contextlib.contextmanager
def _answering_head(token: str) -> Iterator[tuple[dict | None, str]]:
    """A head from :func:`_start_head`: ``(head, "")`` once its dashboard answers, or ``(None, why)`` with the tail
    of Ray's log if it exits first. Stopped (its process group, stray daemons, its temp dir) on leaving."""
    proc, temp_dir, dashboard, env, log = _start_head(token)
    try:
        try:
            wait_http(f"http://127.0.0.1:{dashboard}/api/version", proc, headers={"Authorization": f"Bearer {token}"})
        except AssertionError as err:
            yield None, f"{err}\n{(Path(temp_dir) / 'ray-start.log').read_text()[-3000:]}"
            return
        yield {"address": f"http://127.0.0.1:{dashboard}", "token": token, "env": env, "temp_dir": temp_dir}, ""
    finally:
        _kill_group(proc, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[dict]:
    """``ray start --head`` on 127.0.0.1 with RAY_AUTH_MODE=token and a fresh random token. A head that exits
    before it answers is started once more on new ports; the error then carries what both printed."""
    token = secrets.token_hex(16)
    failures: list[str] = []
    for _attempt in range(2):
        with _answering_head(token) as (head, failure):
            if head is not None:
                yield head
                return
            failures.append(failure)
    pytest.fail("\n\n".join(failures))


def protpeft(*args: str, env: dict, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "protpeft"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_submit_train_job_with_token_auth(
    ray_head: dict, make_config, tiny_model: Path, small_ppi, tmp_path: Path
) -> None:
    address, token = ray_head["address"], ray_head["token"]
    client_env = {**ray_head["env"], "COLUMNS": "250"}  # RAY_AUTH_MODE=token + RAY_AUTH_TOKEN, as a user sets them
    no_token_env = {k: v for k, v in client_env.items() if not k.startswith("RAY_AUTH")}
    no_token_env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on

    # -- without the token: a clear one-line error, no traceback
    denied = protpeft("jobs", "list", "--address", address, env=no_token_env)
    assert denied.returncode == 2
    assert "requires token authentication" in denied.stderr and "Traceback" not in denied.stderr

    # -- a training job: its config and base model travel in the working dir, named by relative paths
    cfg = make_config("ppi", "lora", "optim.max_steps=2", "optim.batch_size=8", "engine.workers=1", name="submitted",
                      small=True)  # fmt: skip
    job_dir = tmp_path / "job"
    shutil.copytree(tiny_model, job_dir / "tiny-esm2")
    raw = cfg.to_dict()
    raw["model"] = {**raw["model"], "base": "tiny-esm2", "base_named": None}
    (job_dir / "train.yaml").write_text(yaml.safe_dump(raw))
    submitted = protpeft(
        "submit",
        "--address",
        address,
        "--working-dir",
        str(job_dir),
        "--",
        "train",
        "train.yaml",
        "--set",
        "engine.log_every=1",
        env=client_env,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split("submitted", 1)[1].split()[0]

    status = protpeft(
        "jobs", "status", job_id, "--wait", "--timeout", "400", "--address", address, env=client_env, timeout=420
    )
    logs = protpeft("jobs", "logs", job_id, "--address", address, env=client_env)
    assert status.stdout.strip() == "SUCCEEDED", logs.stdout[-3000:]
    assert '"steps": 2' in logs.stdout and '"strategy": "local"' in logs.stdout  # the run's printed summary

    followed = protpeft("jobs", "logs", job_id, "--follow", "--address", address, env=client_env)
    assert followed.returncode == 0 and '"steps": 2' in followed.stdout  # the log stream ends with the job
    listed = protpeft("jobs", "list", "--address", address, env=client_env)
    assert job_id in listed.stdout and "SUCCEEDED" in listed.stdout
    stopped = protpeft("jobs", "stop", job_id, "--address", address, env=client_env)
    assert stopped.returncode == 0 and "already ended" in stopped.stdout
    meta = json.loads((cfg.run_dir / "protpeft.json").read_text())
    assert meta["steps"] == 2 and meta["workers"] == 1

    # -- the run names its base as the user did; once the job's copy of the working dir is gone, predicting on
    # the driver finds it from the directory that was shipped, and says how to pass --base from anywhere else
    assert meta["base_named"] == "tiny-esm2" and meta["base_model"].startswith(ray_head["temp_dir"])
    ray_copy = Path(meta["base_model"]).parent
    assert ray_copy.name.startswith("_ray_pkg_")
    shutil.rmtree(ray_copy)
    predict = (
        "predict",
        str(cfg.run_dir),
        "--pairs",
        str(small_ppi["pairs"]),
        "--sequences",
        str(small_ppi["sequences"]),
    )
    found = protpeft(*predict, "--out", str(tmp_path / "found.tsv"), env=client_env, cwd=job_dir)
    assert found.returncode == 0, found.stderr
    elsewhere = protpeft(*predict, "--out", str(tmp_path / "lost.tsv"), env=client_env, cwd=tmp_path)
    assert elsewhere.returncode == 2 and not (tmp_path / "lost.tsv").exists()
    error = elsewhere.stderr.strip()
    assert "base model 'tiny-esm2' not found" in error and "--base" in error and "Traceback" not in error
    given = protpeft(*predict, "--out", str(tmp_path / "given.tsv"), "--base", str(job_dir / "tiny-esm2"),
                     env=client_env, cwd=tmp_path)  # fmt: skip
    assert given.returncode == 0, given.stderr
    assert (tmp_path / "given.tsv").read_text() == (tmp_path / "found.tsv").read_text()
    assert len((tmp_path / "found.tsv").read_text().splitlines()) > 100

    for result in (denied, submitted, status, logs, followed, listed, stopped):  # the token never reaches the terminal
        assert token not in result.stdout and token not in result.stderr
