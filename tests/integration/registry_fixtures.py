"""Fixtures of the registry tests: MLflow stores (embedded SQLite and a real ``mlflow server`` on 127.0.0.1) and tiny
trained runs. Test modules load them with ``pytest_plugins = ["registry_fixtures"]``.

Migrating a fresh SQLite store takes ~9 s on these machines, so one migrated template is made per session and
copied for every test; the server is started once per session and stopped as a process group.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from registry_helpers import TrainedRun, tiny_config, train, use_sqlite_store

from protpeft.trainer.ray_cluster import free_port

# --------------------------------------------------------------------------------------------------------------
# stores


@pytest.fixture(scope="session")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, fully migrated SQLite MLflow store; tests copy it instead of migrating their own."""
    from protpeft.registry.store import ensure_store

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    ensure_store(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def mlflow_server(store_template: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real ``mlflow server`` (SQLite backend, proxied artefacts) on 127.0.0.1, stopped as a process group."""
    from protpeft.process_groups import group_alive
    from protpeft.registry.server import start_server

    root = tmp_path_factory.mktemp("mlflow-server")
    shutil.copy(store_template, root / "mlflow.db")
    server = start_server(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", "127.0.0.1", free_port(),
                          workers=1, log_path=root / "server.log")  # fmt: skip
    try:
        server.wait_ready(timeout=120)
        yield server
    finally:
        server.stop()
    assert not group_alive(server.process.pid), "mlflow server processes survived stop()"


@pytest.fixture
def sqlite_store(store_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    return use_sqlite_store(store_template, tmp_path / "home", monkeypatch)


@pytest.fixture(params=["sqlite", "server"])
def any_store(request: pytest.FixtureRequest, store_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The embedded SQLite store, then the shared ``mlflow server``; the tracking URI is returned."""
    if request.param == "sqlite":
        return use_sqlite_store(store_template, tmp_path / "home", monkeypatch)
    server = request.getfixturevalue("mlflow_server")
    monkeypatch.setenv("PROTPEFT_HOME", str(tmp_path / "home"))  # the client writes nothing there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return server.url


# --------------------------------------------------------------------------------------------------------------
# trained runs (no tracking; registered by the tests) on the small data sets of tests/conftest.py


@pytest.fixture(scope="session")
def ppi_runs(tiny_model: Path, small_ppi: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrainedRun]:
    """LoRA, full and frozen PPI runs of three steps each."""
    out = tmp_path_factory.mktemp("registry-runs")
    return {mode: train(tiny_config(tiny_model, small_ppi, "ppi", mode, out)) for mode in ("lora", "full", "frozen")}


@pytest.fixture(scope="session")
def symmetry_run(tiny_model: Path, small_symmetry: dict, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    out = tmp_path_factory.mktemp("registry-sym-runs")
    return train(tiny_config(tiny_model, small_symmetry, "symmetry", "lora", out))
