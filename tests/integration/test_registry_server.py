"""The shared-server case: artefacts travel through a real ``mlflow server`` (proxied, nothing written beside the
client), and ``protpeft mlflow-server`` starts a server that a client can use and stops it as a whole group."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from registry_helpers import sample_pairs, wait_http

from protpeft.trainer.ray_cluster import free_port

pytest_plugins = ["registry_fixtures"]  # the registry's fixtures (stores, server, trained runs)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("any_store", ["server"], indirect=True)
def test_artefacts_are_proxied_through_the_server(any_store, mlflow_server, ppi_runs, tmp_path):
    from protpeft.registry import load, register_run

    version = register_run(ppi_runs["full"].run_dir, "ppi-proxied", alias="champion")
    assert version.source.startswith("mlflow-artifacts:/")
    stored = [p for p in Path(mlflow_server.artifacts_destination).rglob("backbone/model.safetensors")]
    assert len(stored) == 1 and "artifacts/model/artifacts/run" in stored[0].as_posix()
    assert not (tmp_path / "home").exists()  # the client wrote no local store or artefacts
    np.testing.assert_allclose(load("ppi-proxied@champion").predict(pairs=sample_pairs()),
                               ppi_runs["full"].predictions, rtol=0, atol=1e-6)  # fmt: skip


def _server_pids(port: int) -> list[int]:
    """Live processes of this server: the command (``... mlflow-server --port PORT``), ``mlflow server --port PORT``
    and the ``uvicorn --port PORT ... mlflow.server.fastapi_app:app`` it runs. Matched on whole arguments: another
    test's process with the same number somewhere in its command line (a torch.distributed port beside a JSON config
    naming ``mlflow``: two of them were killed as the server's once) is not the server's."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        named = any(a in ("mlflow", "mlflow-server") or a.startswith("mlflow.") for a in args)
        on_port = any(a == "--port" and b == str(port) for a, b in zip(args, args[1:], strict=False))
        if named and on_port and state != "Z" and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def test_mlflow_server_command_serves_a_client_and_stops_as_a_group(store_template, tmp_path):
    from mlflow import MlflowClient

    home = tmp_path / "lab"
    home.mkdir()
    shutil.copy(store_template, home / "mlflow.db")  # a migrated store: the command would otherwise create it
    port = free_port()
    env = {**os.environ, "PROTPEFT_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "protpeft.cli", "mlflow-server", "--port", str(port),
                             "--workers", "1"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/health", proc, timeout=180)
        except AssertionError:
            raise AssertionError((tmp_path / "server.log").read_text()[-4000:]) from None
        client = MlflowClient(f"http://127.0.0.1:{port}")
        experiment = client.create_experiment("lab")
        run = client.create_run(experiment)
        client.log_text(run.info.run_id, "hello", "note.txt")
        assert client.get_experiment(experiment).artifact_location.startswith("mlflow-artifacts:")
        assert (home / "mlartifacts").is_dir() and list((home / "mlartifacts").rglob("note.txt"))

        assert len(_server_pids(port)) >= 2  # the command, the server and its worker
        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C on the command stops the server's whole process group
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while _server_pids(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _server_pids(port) == [], "mlflow server processes survived the command"
    finally:
        for pid in [proc.pid] * (proc.poll() is None) + _server_pids(port):
            os.kill(pid, signal.SIGKILL)
        log.close()
