"""``protpeft serve`` end to end: a real subprocess serving five registered versions of one tiny base (two PPI LoRA
adapters, a symmetry adapter, a frozen head, a full fine-tune) on loopback, from an isolated SQLite MLflow store.

One server per module. Answers must equal offline predictions (``protpeft.registry.load(ref).predict``); the
deployment's own storage report must show one copy of the base; bad requests get 4xx with a message; a moved alias
is picked up by ``POST /admin/reload``; Ctrl-C stops the process cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from registry_helpers import (
    TrainedRun,
    sample_pairs,
    sample_sequences,
    tiny_config,
    train,
    use_sqlite_store,
    wait_http,
)

from protpeft.trainer.ray_cluster import free_port

pytest_plugins = ["registry_fixtures"]  # stores, tiny trained runs

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]  # offline references: 1 thread

PROTPEFT = str(Path(sys.executable).with_name("protpeft"))
MAX_ITEMS = 8
MAX_LENGTH = 200
ADMIN_TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SERVED = {"ppi-a": "lora", "ppi-b": "lora-b", "sym": "symmetry", "ppi-frozen": "frozen", "ppi-full": "full"}


def request(url: str, payload: dict | None = None, method: str | None = None, raw: bytes | None = None,
            headers: dict[str, str] | None = None):  # fmt: skip
    """(status, decoded JSON body) of one HTTP call; errors are answers too."""
    data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else None)
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": "application/json", **(headers or {})})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            body = response.read()
            return response.status, json.loads(body) if body else None
    except urllib.error.HTTPError as err:
        body = err.read()
        return err.code, json.loads(body) if body else None


@pytest.fixture(scope="module")
def second_lora(tiny_model: Path, small_ppi: dict, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """Another PPI adapter on the same base (other seed and learning rate: other predictions)."""
    out = tmp_path_factory.mktemp("serve-runs")
    return train(tiny_config(tiny_model, small_ppi, "ppi", "lora", out, "name=ppi-lora-b", "optim.seed=1",
                             "optim.lr=2e-2"))  # fmt: skip


@pytest.fixture(scope="module")
def runs(ppi_runs: dict, symmetry_run: TrainedRun, second_lora: TrainedRun) -> dict[str, TrainedRun]:
    by_kind = {**ppi_runs, "lora-b": second_lora, "symmetry": symmetry_run}
    return {name: by_kind[kind] for name, kind in SERVED.items()}


@pytest.fixture(scope="module")
def store(store_template: Path, tmp_path_factory: pytest.TempPathFactory, runs: dict):
    """An isolated store holding version 1 of every served name, aliased champion (env set for the module)."""
    from protpeft.registry import register_run

    with pytest.MonkeyPatch.context() as mp:
        uri = use_sqlite_store(store_template, tmp_path_factory.mktemp("serve-home"), mp)
        for name, run in runs.items():
            register_run(run.run_dir, name, alias="champion")
        yield uri


@pytest.fixture(scope="module")
def server(store: str, tmp_path_factory: pytest.TempPathFactory):
    """``protpeft serve`` as a real subprocess; yields (base URL, process, log path)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve-log") / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"HF_HUB_OFFLINE": "1"}
    refs = [f"{name}@champion" for name in SERVED]
    with log_path.open("wb") as log:
        process = subprocess.Popen([PROTPEFT, "serve", *refs, "--port", str(port), "--max-items", str(MAX_ITEMS),
                                    "--max-length", str(MAX_LENGTH), "--admin-token", ADMIN_TOKEN], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(f"{url}/healthz", process, timeout=300)
        except AssertionError:
            raise AssertionError(log_path.read_text()[-6000:]) from None
        yield url, process, log_path
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def offline(ref: str, pairs=None, sequences=None) -> np.ndarray:
    from protpeft.registry import load

    return load(ref).predict(pairs=pairs, sequences=sequences)


def predict(url: str, name: str, payload: dict) -> dict:
    status, body = request(f"{url}/v1/models/{name}/predict", payload)
    assert status == 200, body
    return body


# --------------------------------------------------------------------------------------------------------------


def test_two_adapters_answer_like_offline_predictions_on_one_copy_of_the_base(server, tiny_model):
    from protpeft.models.backbone import load_backbone

    url, _, _ = server
    pairs = [list(p) for p in sample_pairs()]
    expected = {name: offline(f"{name}@champion", pairs=pairs) for name in ("ppi-a", "ppi-b")}
    assert np.abs(expected["ppi-a"] - expected["ppi-b"]).max() > 1e-3  # the adapters differ: switching matters

    # Interleaved concurrent requests, so that batches mix both models (grouped per model inside a batch).
    jobs = [("ppi-a" if i % 2 else "ppi-b", i % len(pairs)) for i in range(24)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda job: predict(url, job[0], {"pairs": [pairs[job[1]]]}), jobs))
    for (name, i), body in zip(jobs, answers, strict=True):
        assert (body["model"], body["version"], body["task"]) == (name, 1, "ppi")
        np.testing.assert_allclose(body["probabilities"], expected[name][i : i + 1], rtol=0, atol=1e-5)
        assert body["labels"] == [int(expected[name][i] >= 0.5)]
    for name in ("ppi-a", "ppi-b"):  # and all pairs in one request
        body = predict(url, name, {"pairs": pairs})
        np.testing.assert_allclose(body["probabilities"], expected[name], rtol=0, atol=1e-5)

    status, report = request(f"{url}/v1/models")
    assert status == 200
    storage = report["storage"]
    base_bytes = sum(p.numel() * p.element_size() for p in load_backbone(str(tiny_model)).parameters())
    assert storage["base_copies"] == 1
    assert storage["base_bytes"] == base_bytes  # held once ...
    assert storage["base_bytes_if_separate"] == 4 * base_bytes  # ... by the two adapters, sym and frozen
    assert (storage["adapters"], storage["own_backbones"]) == (3, 1)
    assert 0 < storage["adapter_bytes"] < base_bytes
    models = {m["name"]: m for m in report["models"]}
    assert sorted(models) == sorted(SERVED)
    fingerprint = models["ppi-a"]["base_fingerprint"]
    assert models["ppi-b"]["backbone"] == models["ppi-frozen"]["backbone"] == f"shared base {fingerprint}"
    assert models["ppi-full"]["backbone"].startswith("own")
    assert models["ppi-a"]["version"] == 1 and models["ppi-a"]["aliases"] == ["champion"]
    assert models["ppi-a"]["base_model"] == str(tiny_model) and "val_aupr" in models["ppi-a"]["metrics"]
    assert report["limits"]["max_items"] == MAX_ITEMS


def test_symmetry_frozen_and_full_versions_answer_like_offline_predictions(server, runs):
    url, _, _ = server
    sequences = sample_sequences()
    body = predict(url, "sym", {"sequences": sequences})
    np.testing.assert_allclose(body["probabilities"], offline("sym@champion", sequences=sequences), rtol=0, atol=1e-5)
    assert body["label_names"] == runs["sym"].meta["label_names"]
    assert all(isinstance(labels, list) for labels in body["labels"])
    pairs = [list(p) for p in sample_pairs()]
    for name in ("ppi-frozen", "ppi-full"):
        body = predict(url, name, {"pairs": pairs})
        np.testing.assert_allclose(body["probabilities"], offline(f"{name}@champion", pairs=pairs), rtol=0,
                                   atol=1e-5)  # fmt: skip


BAD_REQUESTS = [
    # (model, raw body or JSON payload, status, words in the message)
    ("no-such-model", {"pairs": [["MKT", "MKV"]]}, 404, ["no-such-model", "ppi-a"]),
    ("ppi-a", b"", 422, ["empty request body"]),
    ("ppi-a", b"{not json", 422, ["not valid JSON"]),
    ("ppi-a", {"sequences": ["MKTAYIAKQR"]}, 409, ["PPI model", "pairs"]),
    ("sym", {"pairs": [["MKT", "MKV"]]}, 409, ["symmetry model", "sequences"]),
    ("ppi-a", {"pairs": [["MKT", "MKV", "MKW"]]}, 422, ["pairs.0"]),
    ("ppi-a", {"pairs": [["MKTJAYI", "MKV"]]}, 422, ["'J'", "position 4"]),
    ("ppi-a", {"pairs": [["MKT AYI", "MKV"]]}, 422, ["' '", "position 4"]),
    ("ppi-a", {"pairs": [["", "MKV"]]}, 422, ["empty sequence"]),
    ("ppi-a", {"pairs": [["MKT", "MKV"]], "threshold": False}, 422, ["threshold"]),
    ("ppi-a", {"pairs": [["MKT", "M" * (MAX_LENGTH + 1)]]}, 413, [str(MAX_LENGTH + 1), str(MAX_LENGTH)]),
    ("ppi-a", {"pairs": [["MKT", "MKV"]] * (MAX_ITEMS + 1)}, 413, [str(MAX_ITEMS + 1), "split"]),
    ("ppi-a", {"pairs": []}, 422, ["at least 1"]),
    ("ppi-a", {"pairs": [["MKT", "MKV"]], "sequences": ["MKT"]}, 422, ["exactly one"]),
    ("ppi-a", {"pairs": None, "sequences": ["MKT"]}, 422, ["pairs"]),
    ("ppi-a", b'{"pairs": [["\xff\xfe", "MKV"]]}', 400, ["parsing the body"]),
]


def test_bad_requests_get_4xx_with_a_message_and_the_server_keeps_serving(server):
    url, process, _ = server
    for name, payload, status, words in BAD_REQUESTS:
        raw = payload if isinstance(payload, bytes) else None
        got, body = request(f"{url}/v1/models/{name}/predict", None if raw is not None else payload, "POST", raw)
        assert got == status, (name, payload, body)
        assert all(w in body["detail"] for w in words), body["detail"]
    assert process.poll() is None
    assert predict(url, "ppi-a", {"pairs": [["MKTAYIAKQR", "MSEQNNTEMT"]]})["version"] == 1


def test_openapi_schema_and_health_are_published(server):
    url, _, _ = server
    status, schema = request(f"{url}/openapi.json")
    assert status == 200
    assert "/v1/models/{name}/predict" in schema["paths"] and "/admin/reload" in schema["paths"]
    assert {"PredictRequest", "PredictResponse", "ModelsResponse"} <= set(schema["components"]["schemas"])
    assert request(f"{url}/healthz") == (200, {"status": "ok", "models": sorted(SERVED)})


def test_reload_swaps_in_the_version_an_alias_moved_to(server, runs, second_lora):
    from protpeft.registry import register_run, set_alias

    url, _, _ = server
    pairs = [list(p) for p in sample_pairs()]
    expected = {1: offline("ppi-a/1", pairs=pairs)}
    register_run(second_lora.run_dir, "ppi-a", alias="champion")  # version 2, alias moved
    expected[2] = offline("ppi-a/2", pairs=pairs)

    with ThreadPoolExecutor(6) as pool:  # requests in flight while the version is swapped: none may fail
        answers = [pool.submit(predict, url, "ppi-a", {"pairs": pairs}) for _ in range(30)]
        status, body = request(f"{url}/admin/reload", {}, headers=ADMIN)
        answers = [a.result() for a in answers]
    for answer in answers:
        np.testing.assert_allclose(answer["probabilities"], expected[answer["version"]], rtol=0, atol=1e-5)
    assert status == 200, body
    assert body["changed"] == [{"name": "ppi-a", "ref": "ppi-a@champion", "old_version": 1, "new_version": 2}]
    assert sorted(body["unchanged"]) == sorted(set(SERVED) - {"ppi-a"}) and body["errors"] == {}
    answer = predict(url, "ppi-a", {"pairs": pairs})
    assert answer["version"] == 2
    np.testing.assert_allclose(answer["probabilities"], expected[2], rtol=0, atol=1e-5)
    storage = request(f"{url}/v1/models")[1]["storage"]
    assert (storage["base_copies"], storage["adapters"]) == (1, 3)  # version 1's adapter was released

    set_alias("ppi-a", 1, "champion")  # and back
    assert request(f"{url}/admin/reload", {}, headers=ADMIN)[1]["changed"][0]["new_version"] == 1
    np.testing.assert_allclose(predict(url, "ppi-a", {"pairs": pairs})["probabilities"], expected[1], rtol=0,
                               atol=1e-5)  # fmt: skip


def test_admin_endpoints_need_the_admin_token_and_change_nothing_without_it(server):
    url, _, _ = server
    for headers, status, words in [(None, 401, "bearer token"), ({"Authorization": "Bearer wrong"}, 403, "not valid"),
                                   ({"Authorization": "Basic dXNlcjpwYXNz"}, 401, "bearer token")]:  # fmt: skip
        got, body = request(f"{url}/admin/models/ppi-b", method="DELETE", headers=headers)
        assert (got, words in body["detail"]) == (status, True), body
        assert request(f"{url}/admin/reload", {}, headers=headers)[0] == status
        assert request(f"{url}/admin/models", {"ref": "nothing@champion"}, headers=headers)[0] == status
    assert predict(url, "ppi-b", {"pairs": [["MKT", "MKV"]]})["version"] == 1  # still served
    assert request(f"{url}/v1/models/ppi-b")[0] == 200  # predictions and listings stay open


def test_models_are_removed_and_added_at_run_time(server):
    url, _, _ = server
    assert request(f"{url}/admin/models/ppi-b", method="DELETE", headers=ADMIN)[0] == 204
    assert request(f"{url}/v1/models/ppi-b/predict", {"pairs": [["MKT", "MKV"]]})[0] == 404
    assert request(f"{url}/v1/models")[1]["storage"]["adapters"] == 2
    assert request(f"{url}/admin/models/ppi-b", method="DELETE", headers=ADMIN)[0] == 404
    status, body = request(f"{url}/admin/models", {"ref": "ppi-b@champion"}, headers=ADMIN)
    assert status == 201 and body["name"] == "ppi-b" and body["loaded"], body
    assert request(f"{url}/admin/models", {"ref": "ppi-b@champion"}, headers=ADMIN)[0] == 409
    status, body = request(f"{url}/admin/models", {"ref": "nothing@champion"}, headers=ADMIN)
    assert status == 404 and "registered models" in body["detail"]
    assert request(f"{url}/v1/models")[1]["storage"]["adapters"] == 3


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_metrics_count_requests_errors_latency_batches_and_adapters(server):
    url, _, _ = server

    def scrape() -> str:
        with urllib.request.urlopen(f"{url}/metrics", timeout=60) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            return response.read().decode()

    route = "/v1/models/{name}/predict"
    before = scrape()
    for _ in range(3):
        predict(url, "ppi-a", {"pairs": [["MKTAYIAKQR", "MSEQNNTEMT"]] * 2})
    assert request(f"{url}/v1/models/nothing/predict", {"pairs": [["MKT", "MKV"]]})[0] == 404
    after = scrape()
    ok = {"method": "POST", "route": route, "status": "200"}
    assert (
        metric(after, "protpeft_http_requests_total", **ok) - metric(before, "protpeft_http_requests_total", **ok) == 3
    )
    assert metric(after, "protpeft_http_errors_total", status="404") > metric(before, "protpeft_http_errors_total",
                                                                                status="404")  # fmt: skip
    count = "protpeft_http_request_duration_seconds_count"
    assert metric(after, count, route=route) - metric(before, count, route=route) == 4
    assert metric(after, "protpeft_batch_requests_count") >= metric(before, "protpeft_batch_requests_count") + 1
    predicted = "protpeft_predicted_examples_total"
    assert metric(after, predicted, model="ppi-a") - metric(before, predicted, model="ppi-a") == 6
    assert metric(after, "protpeft_loaded_adapters") == 3 and metric(after, "protpeft_loaded_models") == len(SERVED)
    # the same two proteins three times: encoded at most once, then found in the embedding cache
    hits, encoded = "protpeft_embedding_cache_hits_total", "protpeft_encoded_sequences_total"
    assert metric(after, hits) - metric(before, hits) >= 4
    assert metric(after, encoded) - metric(before, encoded) <= 2
    assert metric(after, "protpeft_embedding_cache_capacity") > 0 and metric(after, "protpeft_embedding_cache_entries")


def test_the_api_conforms_to_its_own_openapi_schema(server, tmp_path):
    """schemathesis, every check, against /openapi.json on loopback: no failure of any kind, server healthy after."""
    url, process, log_path = server
    st = str(Path(sys.executable).with_name("schemathesis"))
    # 413 (over this server's published maxItems/maxLength) is a documented rejection of schema-violating data too.
    # One worker: CPython 3.11 < 3.11.8 can raise "AST constructor recursion depth mismatch" when hypothesis parses
    # lambdas on two threads at once (python/cpython#106905), an error of the fuzzer, not of the server.
    config = tmp_path / "schemathesis.toml"
    config.write_text('[checks.negative_data_rejection]\n'
                      'expected-statuses = ["400", "401", "403", "404", "405", "409", "413", "422"]\n')  # fmt: skip
    proc = subprocess.run([st, "--config-file", str(config), "run", f"{url}/openapi.json", "--checks", "all",
                           "--mode", "all", "--max-examples", "15", "--seed", "14", "--workers", "1", "--no-shrink",
                           "--request-timeout", "30", "-H", f"Authorization: Bearer {ADMIN_TOKEN}",
                           "--phases", "examples,coverage,fuzzing,stateful"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    assert process.poll() is None, log_path.read_text()[-4000:]
    status, health = request(f"{url}/healthz")
    assert status == 200 and health["status"] == "ok" and set(health["models"]) <= set(SERVED)
    for name in sorted(set(SERVED) - set(health["models"])):  # the fuzzer holds the admin token: it may remove some
        assert request(f"{url}/admin/models", {"ref": f"{name}@champion"}, headers=ADMIN)[0] == 201
    assert request(f"{url}/healthz") == (200, {"status": "ok", "models": sorted(SERVED)})
    assert predict(url, "ppi-a", {"pairs": [["MKTAYIAKQR", "MSEQNNTEMT"]]})["probabilities"]


def test_an_unknown_reference_fails_before_anything_starts(store):
    proc = subprocess.run([PROTPEFT, "serve", "ppi-a@champion", "sym@nope"], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert "no alias 'nope'" in proc.stderr and "champion" in proc.stderr, proc.stderr


def test_ctrl_c_shuts_serve_down_cleanly(server):
    url, process, log_path = server
    port = int(url.rsplit(":", 1)[1])
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 0, log_path.read_text()[-4000:]
    assert log_path.read_text().rstrip().endswith("stopped")
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
