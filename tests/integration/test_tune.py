"""Ray Tune searches over Ray Train trials: nested MLflow runs, ASHA, the best registered, the report matching the
trials; an interrupted frozen-mode search resumed without rerunning finished trials, embedding each sequence once for
the whole search (one test: each Tune trial costs ~30 CPU-seconds of Ray start-up on the 2-core CI)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest_plugins = ["registry_fixtures"]
pytestmark = pytest.mark.integration


def write_tune_file(path: Path, tiny_model: Path, data: dict[str, Path], **sections) -> Path:
    """A TUNE.yaml over an inline base config: the tiny model, the 200-pair synthetic set, short trials."""
    config = {
        "task": "ppi",
        "mode": "lora",
        "model": {"base": str(tiny_model)},
        "data": {"pairs": str(data["pairs"]), "sequences": str(data["sequences"])},
        "lora": {"last_layers": 4},
        "optim": {"batch_size": 16, "grad_accum": 1, "epochs": 100, "max_steps": 12, "lr": 5e-3},
        "engine": {"eval_every": 4},
        "tracking": {"experiment": "tune-test"},
    }
    for key, value in sections.pop("config", {}).items():
        config.setdefault(key, {}).update(value) if isinstance(value, dict) else config.__setitem__(key, value)
    spec = {"config": config, "storage": str(path.parent / "experiments"), "name": path.stem, **sections}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def ray_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def test_random_search_with_asha_nests_runs_registers_best_and_reports(
    ray_local, tiny_model: Path, small_ppi: dict, sqlite_store: str, tmp_path: Path
) -> None:
    from protpeft.registry import get_version, store
    from protpeft.tune import run_search
    from protpeft.tune.driver import TRIAL_TAG

    path = write_tune_file(
        tmp_path / "search.yaml", tiny_model, small_ppi,
        search={"algorithm": "random", "num_samples": 4, "max_concurrent": 2, "seed": 1},
        asha={"enabled": True, "grace_period": 4, "reduction_factor": 2},
        space={"optim.lr": {"loguniform": [1e-4, 3e-2]}, "model.head_hidden": {"choice": [32, 64]}},
    )  # fmt: skip
    result = run_search(path, register_best="tuned-ppi")

    # -- every trial ran (finished, or stopped early by ASHA), two at a time
    assert not result.interrupted and len(result.trials) == 4
    states = [t["state"] for t in result.trials]
    assert set(states) <= {"FINISHED", "STOPPED"} and "FINISHED" in states, states
    for row in result.trials:
        assert row["steps"] == (12 if row["state"] == "FINISHED" else row["steps"]) and row["steps"] >= 4
        if row["state"] == "STOPPED":
            assert row["steps"] < 12  # ASHA cut it at a rung
    attempts = (result.experiment_dir / "attempts.jsonl").read_text().splitlines()
    starts = sorted(json.loads(line)["time"] for line in attempts)
    finished_first = min(Path(t["run_dir"], "protpeft.json").stat().st_mtime for t in result.trials if t["run_dir"])
    assert starts[1] < finished_first, "the second trial started only after the first ended: not concurrent"

    # -- MLflow: one parent run, every trial a nested child run carrying its trial's metrics
    client = store.client(sqlite_store)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["best_trial_id"] == result.best["trial_id"]
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'"
    )
    by_trial = {run.data.tags[TRIAL_TAG]: run for run in children}
    assert sorted(by_trial) == sorted(t["trial_id"] for t in result.trials)
    for row in result.trials:
        child = by_trial[row["trial_id"]]
        assert child.data.params["optim.lr"] == str(row["config"]["optim.lr"])
        if row["state"] == "FINISHED":
            assert child.info.status == "FINISHED"
            assert child.data.metrics["val_aupr"] == pytest.approx(row["metrics"]["val_aupr"])
        else:
            assert child.info.status == "KILLED"
    report_artifacts = {a.path for a in client.list_artifacts(result.parent_run_id, "report")}
    assert "report/report.md" in report_artifacts and "report/distribution.png" in report_artifacts

    # -- the best finished trial is registered, with its own run and metrics
    best = result.best
    assert best["metrics"]["val_aupr"] == max(
        t["metrics"]["val_aupr"] for t in result.trials if t["state"] == "FINISHED"
    )
    version = get_version("tuned-ppi/1")
    assert result.registered == "tuned-ppi/1" and version.run_id == best["mlflow_run_id"]
    assert version.metrics["val_aupr"] == pytest.approx(best["metrics"]["val_aupr"])

    # -- the report's numbers are the trials' (as MLflow recorded them)
    markdown = result.report.read_text()
    stats = markdown.split("## Final val_aupr by mode", 1)[1].split("\n\n")[1].splitlines()[2]
    cells = [c.strip() for c in stats.strip("|").split("|")]
    finished = np.array([by_trial[t["trial_id"]].data.metrics["val_aupr"] for t in result.trials
                         if t["state"] == "FINISHED"])  # fmt: skip
    assert cells[0] == "lora" and int(cells[1]) == len(finished)
    assert [float(c) for c in cells[2:5]] == pytest.approx(
        [finished.min(), np.median(finished), finished.max()], abs=1e-4
    )
    for plot in ("distribution.png", "effect_optim_lr.png", "effect_model_head_hidden.png", "sensitivity.png"):
        assert (result.report.parent / plot).stat().st_size > 10_000
    assert (result.report.parent / "report.html").is_file()


def test_interrupted_frozen_search_resumes_without_rerunning_finished_trials_and_embeds_once(
    ray_local, tiny_model: Path, small_ppi: dict, sqlite_store: str, tmp_path: Path
) -> None:
    """A user's Ctrl+C on `protpeft tune`, then `protpeft tune --resume EXPERIMENT`: the finished trial is not run
    again, the interrupted one continues. The search is over head hyperparameters in frozen mode, so it also shows
    the embedding cache shared by the whole search: one trial embeds every sequence, the other (in both of its
    attempts) reads them."""
    from protpeft.config import load_config
    from protpeft.data.datasets import load_task_data

    cache = tmp_path / "embeddings"
    path = write_tune_file(
        tmp_path / "resume.yaml", tiny_model, small_ppi,
        config={"mode": "frozen", "data": {"cache_dir": str(cache)}, "optim": {"max_steps": 16},
                "engine": {"eval_every": 4, "checkpoint_every": 4}},
        search={"algorithm": "grid", "max_concurrent": 1},
        space={"optim.lr": {"grid": [1e-3, 1e-2]}},
    )  # fmt: skip
    exp_dir = tmp_path / "experiments" / "resume"
    command = [sys.executable, "-m", "protpeft", "tune", str(path), "--address", ray_address()]
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 420
        ends = exp_dir / "ledger" / "trial_ends.json"  # written by the experiment as each trial ends
        while not (ends.is_file() and "complete" in ends.read_text()):  # the first trial finished
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(1)
        time.sleep(3)  # the second trial is under way
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=180) == 130, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    _assert_no_placement_group_outlives_its_job()
    before = json.loads((exp_dir / "trials.json").read_text())
    assert before["interrupted"]
    done_before = {t["trial_id"]: t for t in before["trials"] if t["state"] == "FINISHED"}
    assert len(done_before) == 1, [t["state"] for t in before["trials"]]
    stamps = {tid: Path(t["run_dir"], "protpeft.json").stat().st_mtime_ns for tid, t in done_before.items()}

    resumed = subprocess.run(
        [sys.executable, "-m", "protpeft", "tune", "--resume", str(exp_dir), "--address", ray_address()],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = json.loads((exp_dir / "trials.json").read_text())
    assert not after["interrupted"] and [t["state"] for t in after["trials"]] == ["FINISHED"] * 2
    assert sorted(t["config"]["optim.lr"] for t in after["trials"]) == [1e-3, 1e-2]
    rows = {t["trial_id"]: t for t in after["trials"]}
    for tid, stamp in stamps.items():  # finished trials were not run again: no start of theirs after the resume
        assert rows[tid]["attempts"] == done_before[tid]["attempts"] >= 1, (done_before[tid], rows[tid])
        assert Path(rows[tid]["run_dir"], "protpeft.json").stat().st_mtime_ns == stamp
        assert rows[tid]["metrics"]["val_aupr"] == done_before[tid]["metrics"]["val_aupr"]
    assert all(t["steps"] == 16 for t in after["trials"])
    assert (exp_dir / "report" / "report.md").is_file()

    # -- each sequence embedded once for the whole search: one trial embedded all, the other read the cache
    cfg = load_config(None, ["task=ppi", f"data.pairs={small_ppi['pairs']}",
                             f"data.sequences={small_ppi['sequences']}"])  # fmt: skip
    unique = len(set(load_task_data(cfg.task, cfg.data).sequences.values()))
    embedded = [t["embedded_sequences"] for t in after["trials"]]
    assert sorted(embedded) == [0, unique], embedded


def _assert_no_placement_group_outlives_its_job(timeout: float = 20) -> None:
    """Every placement group of the drivers that ended (all jobs but this test's) is removed: a leaked one keeps
    the instance's CPUs reserved, and the next search waits for them forever."""
    import ray
    from ray.util.placement_group import placement_group_table

    ours = ray.get_runtime_context().get_job_id()
    deadline = time.monotonic() + timeout
    while True:
        held = {pg: row["bundles"] for pg, row in placement_group_table().items()
                if row["state"] != "REMOVED" and not pg.endswith(ours)}  # fmt: skip
        if not held:
            return
        assert time.monotonic() < deadline, f"placement groups of ended jobs still held: {held}"
        time.sleep(0.5)
