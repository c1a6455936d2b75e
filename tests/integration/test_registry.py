"""The model registry end to end, against the embedded SQLite store and a real ``mlflow server`` (``any_store``):
train with MLflow tracking → register → alias → pull by name in a fresh process; concurrent registrations; clear
errors for unknown references and refused artefacts; full and adapter versions stored alike, with sizes."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from registry_helpers import last_json_line, run_python, sample_pairs, tiny_config, train

pytest_plugins = ["registry_fixtures"]  # the registry's fixtures (stores, server, trained runs)

pytestmark = pytest.mark.integration


def artefact_bytes(run_dir: Path) -> int:
    """Size of what a version stores: the run directory without its checkpoints."""
    return sum(p.stat().st_size for p in run_dir.rglob("*")
               if p.is_file() and p.relative_to(run_dir).parts[0] != "checkpoints")  # fmt: skip


def stored_run_dir(version) -> Path:
    """Where the embedded store keeps a version's run directory on disk."""
    return Path(urlparse(version.source).path) / "artifacts" / "run"


def copy_run_dir(run_dir: Path, dest: Path, **meta_changes) -> Path:
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("checkpoints"))
    if meta_changes:
        meta = json.loads((dest / "protpeft.json").read_text())
        meta.update(meta_changes)
        (dest / "protpeft.json").write_text(json.dumps(meta))
    return dest


def test_train_register_alias_then_pull_by_name_in_a_fresh_process(any_store, tiny_model, small_ppi, tmp_path):
    from mlflow import MlflowClient

    from protpeft.artifact import read_artifact
    from protpeft.registry import get_version, register_run, set_alias
    from protpeft.registry.tracking import logger_factory

    cfg = tiny_config(tiny_model, small_ppi, "ppi", "lora", tmp_path / "runs", "tracking.mlflow=true",
                      "engine.log_every=1")  # fmt: skip
    factory = pickle.loads(pickle.dumps(logger_factory(cfg)))  # as shipped to a Ray worker
    trained = train(cfg, logger=factory())
    name = "ppi-roundtrip"
    client = MlflowClient(any_store)
    client.set_tag(factory.run_id, "owner", "lab-a")  # a user's tag on the run travels to the version

    version = register_run(trained.run_dir, name, mlflow_run_id=factory.run_id)
    assert (version.version, version.run_id, version.aliases) == (1, factory.run_id, ())
    assert set_alias(name, 1, "champion").aliases == ("champion",)
    assert get_version(f"{name}@champion").version == 1

    # tracking: whole config as params, per-step metrics, lineage tags, costs, finished
    run = client.get_run(factory.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.005" and run.data.params["model.base"] == str(tiny_model)
    assert run.data.params["lora.target_modules"] == "['key', 'value']"
    assert [m.step for m in client.get_metric_history(factory.run_id, "train_loss")] == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(factory.run_id, "val_aupr")] == [3]
    meta = trained.meta
    for key in ("task", "mode", "base_model", "base_fingerprint", "dataset_fingerprint"):
        assert run.data.tags[key] == str(meta[key]) == version.tags[key]
    assert run.data.tags["git_commit"] == version.tags["git_commit"] != ""
    assert version.tags["owner"] == "lab-a"
    assert run.data.metrics["params_trainable"] == meta["params"]["trainable"]
    assert run.data.metrics["params_total"] == meta["params"]["total"]
    assert run.data.metrics["peak_memory_mb"] > 0 and run.data.metrics["wall_seconds"] > 0
    assert version.metrics["val_aupr"] == pytest.approx(meta["metrics"]["val_aupr"])
    assert version.size_bytes == artefact_bytes(trained.run_dir)
    assert "ppi lora" in version.description and factory.run_id in version.description

    # lineage: the artefact names its training run, so registering the directory alone links to that run (with its
    # train_loss history) and adds no run, however often it is registered
    assert read_artifact(trained.run_dir).mlflow_run_id == factory.run_id
    runs_before = len(client.search_runs([run.info.experiment_id]))
    again = [register_run(trained.run_dir, f"{name}-again") for _ in range(2)]
    assert [v.run_id for v in again] == [factory.run_id, factory.run_id] and [v.version for v in again] == [1, 2]
    assert len(client.search_runs([run.info.experiment_id])) == runs_before

    # a fresh interpreter pulls it by name and predicts exactly what the trained model did
    code = (
        "import json; from protpeft.registry import load\n"
        f"p = load({name + '@champion'!r})\n"
        f"print(json.dumps(p.predict(pairs={sample_pairs()!r}).tolist()))\n"
    )
    pulled = np.array(last_json_line(run_python(code)))
    np.testing.assert_allclose(pulled, trained.predictions, rtol=0, atol=1e-6)


CONCURRENT = """
import json, multiprocessing as mp, pathlib, sys, tempfile
from protpeft.registry import register_run
from protpeft.registry.packaging import package_run

with tempfile.TemporaryDirectory() as tmp:  # import and warm up everything once, before forking (no store access)
    package_run({run_dir!r}, pathlib.Path(tmp))

def work(barrier, queue):
    barrier.wait()
    queue.put(register_run({run_dir!r}, {name!r}).version)

ctx = mp.get_context("fork")
barrier, queue = ctx.Barrier({n}), ctx.Queue()
procs = [ctx.Process(target=work, args=(barrier, queue)) for _ in range({n})]
for p in procs: p.start()
versions = [queue.get(timeout=240) for _ in range({n})]
for p in procs: p.join(60)
print(json.dumps({{"exitcodes": [p.exitcode for p in procs], "versions": versions}}))
"""


def test_concurrent_registrations_of_one_name_give_distinct_versions(any_store, ppi_runs):
    from protpeft.registry import list_versions

    name, n = "ppi-concurrent", 8
    out = last_json_line(run_python(CONCURRENT.format(run_dir=str(ppi_runs["lora"].run_dir), name=name, n=n), 300))
    assert out["exitcodes"] == [0] * n
    assert sorted(out["versions"]) == list(range(1, n + 1))
    versions = list_versions(name)
    assert [v.version for v in versions] == list(range(1, n + 1))
    assert len({v.run_id for v in versions}) == n  # each registration recorded its own run, none lost


def test_unknown_name_alias_or_version_lists_what_exists(any_store, ppi_runs, tmp_path):
    from protpeft.registry import RegistryError, get_version, load, pull, register_run, set_alias

    name = "ppi-known"
    register_run(ppi_runs["lora"].run_dir, name)
    register_run(ppi_runs["frozen"].run_dir, name, alias="champion")

    with pytest.raises(RegistryError, match="no registered model 'ppi-unknown'") as err:
        get_version("ppi-unknown@champion")
    assert name in str(err.value)  # the models that exist are listed
    with pytest.raises(RegistryError, match="no alias 'staging'; versions: 1, 2; aliases: champion → 2"):
        load(f"{name}@staging")
    with pytest.raises(RegistryError, match="no version 7; versions: 1, 2; aliases: champion → 2"):
        pull(f"models:/{name}/7", tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists()
    with pytest.raises(RegistryError, match="no version 9; versions: 1, 2"):
        set_alias(name, 9, "best")
    with pytest.raises(RegistryError, match="expected NAME, NAME@ALIAS"):
        load(f"{name}@")
    assert get_version(name).version == 2  # a bare name is the latest version


def test_corrupted_or_mismatched_artefacts_are_refused(sqlite_store, ppi_runs, tmp_path):
    from protpeft.artifact import ArtifactError
    from protpeft.models.backbone import init_tiny
    from protpeft.registry import list_models, load, pull, register_run

    version = register_run(ppi_runs["lora"].run_dir, "ppi-guarded", alias="champion")
    stored = stored_run_dir(version)
    np.testing.assert_allclose(load("ppi-guarded@champion").predict(pairs=sample_pairs()),
                               ppi_runs["lora"].predictions, atol=1e-6)  # fmt: skip

    # a pickle placed beside the weights
    (stored / "evil.pkl").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(ArtifactError, match=r"evil\.pkl: only safetensors and JSON"):
        load("ppi-guarded@champion")
    with pytest.raises(ArtifactError, match=r"evil\.pkl"):
        pull("ppi-guarded@champion", tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists()  # nothing refused is left behind
    (stored / "evil.pkl").unlink()

    # altered bytes, same size
    head = stored / "head.safetensors"
    original = head.read_bytes()
    head.write_bytes(original[:-4] + bytes(b ^ 0xFF for b in original[-4:]))
    with pytest.raises(ArtifactError, match=r"head\.safetensors: corrupted file"):
        load("ppi-guarded@champion")
    head.write_bytes(original)

    # missing files: one the mode requires, one only the manifest knows
    for missing, message in (("adapter_model.safetensors", "missing adapter_model.safetensors"),
                             ("metrics.jsonl", r"missing metrics\.jsonl \(listed in its manifest\)")):  # fmt: skip
        kept = (stored / missing).read_bytes()
        (stored / missing).unlink()
        with pytest.raises(ArtifactError, match=message):
            load("ppi-guarded@champion")
        (stored / missing).write_bytes(kept)

    # a base model with other weights
    other = init_tiny(tmp_path / "other-tiny", seed=1)
    with pytest.raises(ArtifactError, match="fingerprint .* refusing to combine them"):
        load("ppi-guarded@champion", base=str(other))

    # refused at registration too, before anything is stored
    bad = copy_run_dir(ppi_runs["lora"].run_dir, tmp_path / "bad-run")
    (bad / "extra_state.pt").write_bytes(b"\x80\x04")
    with pytest.raises(ArtifactError, match=r"extra_state\.pt"):
        register_run(bad, "ppi-evil")
    with pytest.raises(ArtifactError, match="no protpeft.json"):
        register_run(tmp_path, "ppi-evil")
    assert [m.name for m in list_models()] == ["ppi-guarded"]


def test_a_model_upload_cut_short_never_mixes_with_the_complete_one(sqlite_store, ppi_runs, tmp_path):
    """A Tune trial interrupted while it uploaded its model leaves part of it among its run's artefacts; the trial,
    resumed, logs its run directory again (here without ``metrics.jsonl``, which it wrote no records into). The
    version registered from that run holds exactly the second upload: the two never merge into one ``model/``."""
    from mlflow import MlflowClient

    from protpeft.artifact import read_artifact
    from protpeft.registry import load, pull, register_run
    from protpeft.registry.run_lifecycle import open_run
    from protpeft.registry.tracking import MLflowLogger

    trained = ppi_runs["lora"].run_dir
    client = MlflowClient(sqlite_store)
    for relog in (True, False):
        run_id, uri = open_run("cut-short", f"trial-{relog}", {}, sqlite_store)
        client.log_artifact(run_id, str(trained / "metrics.jsonl"), "model/artifacts/run")  # the first upload, cut
        resumed = copy_run_dir(trained, tmp_path / f"resumed-{relog}")
        (resumed / "metrics.jsonl").unlink()
        if relog:  # the resumed trial logs its run directory (else registration finds no complete model and uploads)
            MLflowLogger(run_id, uri).log_run_dir(resumed, read_artifact(resumed))
        name = "ppi-relogged" if relog else "ppi-cut-short"
        version = register_run(resumed, name, mlflow_run_id=run_id)
        assert version.source.endswith("/model-2")  # beside the part-upload in model/, never into it
        pulled = pull(name, tmp_path / name)
        got = sorted(p.relative_to(pulled).as_posix() for p in pulled.rglob("*") if p.is_file())
        assert got == sorted(["manifest.json", *(p.relative_to(resumed).as_posix() for p in resumed.rglob("*")
                                                   if p.is_file())])  # fmt: skip
        np.testing.assert_allclose(load(name).predict(pairs=sample_pairs()),
                                   ppi_runs["lora"].predictions, atol=1e-6)  # fmt: skip


def test_base_model_from_argument_env_mapping_or_recorded_location(sqlite_store, ppi_runs, tiny_model, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    from protpeft.base_location import BaseModelNotFound
    from protpeft.registry import load, register_run

    expected = ppi_runs["lora"].predictions
    gone, hub = "/gone/esm2-tiny", "lab/esm2-tiny"
    moved = copy_run_dir(ppi_runs["lora"].run_dir, tmp_path / "moved", base_model=gone, base_named=gone)
    register_run(moved, "ppi-moved")
    hub_like = copy_run_dir(ppi_runs["lora"].run_dir, tmp_path / "hub", base_model=hub, base_named=hub)
    register_run(hub_like, "ppi-hub")

    monkeypatch.delenv("PROTPEFT_BASE_MODEL_DIR", raising=False)
    with pytest.raises(BaseModelNotFound, match="'/gone/esm2-tiny' not found; pass --base .*PROTPEFT_BASE_MODEL_DIR"):
        load("ppi-moved")
    np.testing.assert_allclose(load("ppi-moved", base=str(tiny_model)).predict(pairs=sample_pairs()), expected,
                               atol=1e-6)  # fmt: skip

    bases = tmp_path / "bases"
    (bases / "lab").mkdir(parents=True)
    (bases / "lab" / "esm2-tiny").symlink_to(tiny_model)  # <dir>/<hub id>
    (bases / "esm2-tiny").symlink_to(tiny_model)  # <dir>/<last part>
    monkeypatch.setenv("PROTPEFT_BASE_MODEL_DIR", str(bases))
    for ref in ("ppi-hub", "ppi-moved"):
        np.testing.assert_allclose(load(ref).predict(pairs=sample_pairs()), expected, atol=1e-6)


def test_full_frozen_and_adapter_versions_are_stored_alike_with_sizes(sqlite_store, ppi_runs, tmp_path):
    from protpeft.registry import compare_versions, list_versions, load, pull, register_run

    for mode in ("lora", "full", "frozen"):
        register_run(ppi_runs[mode].run_dir, "ppi-modes")
    versions = list_versions("ppi-modes")
    assert [v.mode for v in versions] == ["lora", "full", "frozen"]
    sizes = {v.mode: v.size_bytes for v in versions}
    assert sizes == {mode: artefact_bytes(ppi_runs[mode].run_dir) for mode in sizes}
    assert sizes["full"] > sizes["lora"] > sizes["frozen"]
    assert all(v.source.endswith("/model") for v in versions)  # one layout for every mode

    rows = compare_versions("ppi-modes")
    assert [(r["version"], r["mode"], r["size_bytes"]) for r in rows] == [
        (v.version, v.mode, v.size_bytes) for v in versions
    ]
    for row, mode in zip(rows, ("lora", "full", "frozen"), strict=True):
        assert row["val_aupr"] == pytest.approx(ppi_runs[mode].meta["metrics"]["val_aupr"])

    pulled = pull("ppi-modes/2", tmp_path / "full")
    files = sorted(p.relative_to(pulled).as_posix() for p in pulled.rglob("*") if p.is_file())
    assert "backbone/model.safetensors" in files and "head.safetensors" in files
    assert not any(f.startswith("checkpoints/") or f.endswith((".pt", ".pkl", ".bin")) for f in files)
    for ref, mode in (("ppi-modes/2", "full"), ("ppi-modes/3", "frozen")):
        np.testing.assert_allclose(load(ref).predict(pairs=sample_pairs()), ppi_runs[mode].predictions, atol=1e-6)


def test_registry_cli_commands(sqlite_store, ppi_runs, tmp_path):
    from typer.testing import CliRunner

    from protpeft.cli import app
    from protpeft.registry import RegistryError

    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(app, list(args), catch_exceptions=True)
        return result

    ok = invoke("registry", "register", str(ppi_runs["lora"].run_dir), "--name", "cli-ppi", "--alias", "champion")
    assert ok.exit_code == 0, ok.output
    assert "registered cli-ppi/1@champion (lora," in ok.output and "kB" in ok.output
    assert invoke("registry", "register", str(ppi_runs["full"].run_dir), "--name", "cli-ppi").exit_code == 0
    assert "cli-ppi@best → version 2" in invoke("registry", "alias", "cli-ppi", "2", "best").output

    listed = invoke("registry", "list", "--json")
    assert json.loads(listed.output)[0] | {"updated": ""} == {
        "name": "cli-ppi", "description": "protpeft ppi models", "latest_version": 2,
        "aliases": {"best": 2, "champion": 1}, "updated": "",
    }  # fmt: skip
    shown = json.loads(invoke("registry", "show", "cli-ppi@best").output)
    assert (shown["version"], shown["aliases"], shown["tags"]["mode"]) == (2, ["best"], "full")
    assert shown["size_bytes"] == artefact_bytes(ppi_runs["full"].run_dir) and shown["size"].endswith("kB")
    assert shown["run_id"] and shown["tags"]["dataset_fingerprint"] == ppi_runs["full"].meta["dataset_fingerprint"]
    compared = json.loads(invoke("registry", "compare", "cli-ppi", "--json").output)
    assert [(r["version"], r["aliases"], r["mode"]) for r in compared] == [
        (1, "champion", "lora"),
        (2, "best", "full"),
    ]
    assert "val_aupr" in compared[0]
    table = invoke("registry", "compare", "cli-ppi").output
    assert "val_aupr" in table and "test_auroc" in table and " kB " in table and "champion" in table

    pulled = invoke("registry", "pull", "cli-ppi@champion", "--to", str(tmp_path / "pulled"))
    assert pulled.exit_code == 0, pulled.output
    assert (tmp_path / "pulled" / "adapter_model.safetensors").is_file()

    missing = invoke("registry", "show", "cli-ppi@staging")
    assert isinstance(missing.exception, RegistryError) and "aliases: best → 2, champion → 1" in str(missing.exception)
