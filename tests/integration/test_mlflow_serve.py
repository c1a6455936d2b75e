"""MLflow's own tooling serves a registered version: ``mlflow models serve -m models:/NAME@alias`` on loopback
answers ``POST /invocations``, and ``mlflow.pyfunc.load_model`` predicts sequences, both with no pickle involved."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
from registry_helpers import sample_pairs, sample_sequences, wait_http

from protpeft.trainer.ray_cluster import free_port

VENV_PATH = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"
"""The environment's scripts first, as in an activated environment: ``mlflow models serve`` runs ``uvicorn``."""

pytest_plugins = ["registry_fixtures"]  # the registry's fixtures (stores, server, trained runs)

pytestmark = pytest.mark.integration


def post_json(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_mlflow_models_serve_answers_predictions_for_a_registered_version(sqlite_store, ppi_runs, tmp_path):
    from protpeft.registry import register_run

    register_run(ppi_runs["lora"].run_dir, "ppi-served", alias="champion")
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/ppi-served@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env={**os.environ, "MLFLOW_TRACKING_URI": sqlite_store, "PATH": VENV_PATH},  # it execs `uvicorn`
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/ping", server, timeout=180)
        except AssertionError:
            raise AssertionError((tmp_path / "serve.log").read_text()[-4000:]) from None
        pairs = sample_pairs()
        status, body = post_json(f"http://127.0.0.1:{port}/invocations",
                                 {"dataframe_split": {"columns": ["seq_a", "seq_b"], "data": pairs}})  # fmt: skip
        assert status == 200, body
        served = np.array([row["probability"] for row in body["predictions"]])
        np.testing.assert_allclose(served, ppi_runs["lora"].predictions, rtol=0, atol=1e-6)

        status, body = post_json(f"http://127.0.0.1:{port}/invocations",
                                 {"dataframe_split": {"columns": ["sequence"], "data": [["MKT"]]}})  # fmt: skip
        assert status == 400 and "seq_a" in json.dumps(body)  # the logged signature is enforced
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have exited already: the error above says why
            os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()


def test_pyfunc_flavour_loads_without_pickles_and_predicts_sequences(sqlite_store, symmetry_run, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    import mlflow.pyfunc

    from protpeft.registry import get_version, register_run

    register_run(symmetry_run.run_dir, "sym-pyfunc", alias="champion")
    source = get_version("sym-pyfunc@champion").source
    local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp_path / "model"))
    names = {p.name for p in (tmp_path / "model").rglob("*") if p.is_file()} | {os.path.basename(local)}
    assert "MLmodel" in names and "pyfunc_model.py" in names
    assert not any(n.endswith((".pkl", ".pickle", ".pt", ".bin")) for n in names)

    import pandas as pd

    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store)
    model = mlflow.pyfunc.load_model("models:/sym-pyfunc@champion")
    frame = model.predict(pd.DataFrame({"sequence": sample_sequences()}))
    assert list(frame.columns) == symmetry_run.meta["label_names"]
    np.testing.assert_allclose(frame.to_numpy(), symmetry_run.predictions, rtol=0, atol=1e-6)
