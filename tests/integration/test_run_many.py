"""``run-many``: four jobs (2 LoRA, 1 frozen, 1 full) share a 2-CPU local cluster — two train at a time, the rest
wait in Ray's queue — and all finish with a summary, while a job that fails on purpose does not stop them; with
``--storage``, each job's run is kept in ``<storage>/<job name>`` and comes back to its run directory here."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from protpeft.errors import ConfigError

pytestmark = pytest.mark.integration


@pytest.fixture
def common_set(tiny_model: Path, small_ppi: dict, tmp_path: Path) -> list[str]:
    """Overrides every job shares: the tiny backbone, the 200-pair synthetic PPI set, 2 optimizer steps."""
    return [
        f"model.base={tiny_model}",
        f"data.pairs={small_ppi['pairs']}",
        f"data.sequences={small_ppi['sequences']}",
        f"output_dir={tmp_path / 'runs'}",
        f"data.cache_dir={tmp_path / 'embeddings'}",
        "optim.batch_size=8",
        "optim.grad_accum=1",
        "optim.max_steps=2",
        "lora.last_layers=2",
        "tracking.mlflow=false",
    ]


def run_quietly(spec: dict, storage: str | None = None):
    from protpeft.trainer.run_many import run_many

    out = io.StringIO()
    rows = run_many(spec, storage=storage, console=Console(file=out, width=160), refresh_s=0.5)
    return rows, out.getvalue()


def test_four_jobs_of_three_modes_finish_beside_a_failing_one(
    ray_local, common_set: list[str], tmp_path: Path
) -> None:
    """2 LoRA + 1 frozen + 1 full job finish on 2 CPUs (two train at a time), and a fifth job that fails on purpose
    (a missing data file) is reported FAILED with its error on one line without stopping the others; all of them
    on one ``--storage`` directory. (One launch covers these checks: each job's Ray start-up costs ~15-30 s on the
    2-core CI machine.)"""
    from protpeft.trainer.ray_run_store import SNAPSHOT_FILE

    missing = tmp_path / "no-such-pairs.tsv"
    spec = {
        "output": str(tmp_path / "compare"),
        "set": common_set,
        "resources": {"CPU": 1},
        "jobs": [
            {"name": "lora-a", "set": ["mode=lora", "optim.lr=1e-3"]},
            {"name": "broken", "set": ["mode=frozen", f"data.pairs={missing}"]},
            {"name": "lora-b", "set": ["mode=lora", "optim.lr=3e-3"]},
            {"name": "frozen", "set": ["mode=frozen"]},
            {"name": "full", "set": ["mode=full"]},
        ],
    }
    store = tmp_path / "store"
    rows, printed = run_quietly(spec, storage=str(store))

    states = [(r["job"], r["state"]) for r in rows]
    assert states == [
        ("lora-a", "FINISHED"),
        ("broken", "FAILED"),
        ("lora-b", "FINISHED"),
        ("frozen", "FINISHED"),
        ("full", "FINISHED"),
    ]
    by_job = {r["job"]: r for r in rows}
    broken = by_job.pop("broken")
    assert str(missing) in broken["error"] and "\n" not in broken["error"]
    assert all(r["steps"] == 2 and r["error"] is None for r in by_job.values())
    assert (
        by_job["frozen"]["trainable_params"]
        < by_job["lora-a"]["trainable_params"]
        < by_job["full"]["trainable_params"]
    )
    assert by_job["full"]["trainable_params"] == by_job["full"]["total_params"]
    assert all(0.0 <= r["val_aupr"] <= 1.0 and 0.0 <= r["test_aupr"] <= 1.0 for r in by_job.values())
    assert all(r["peak_memory_mb"] > 0 and r["seconds"] > 0 for r in by_job.values())
    for job in by_job:  # the run in <storage>/<job>, its artefact brought back to the run directory
        assert (store / job / SNAPSHOT_FILE).is_file()
        published = (store / job / "artifact" / "protpeft.json").read_bytes()
        assert (tmp_path / "runs" / job / "protpeft.json").read_bytes() == published
    assert not (tmp_path / "runs" / "ray_results").exists()  # the default storage was not used

    saved = json.loads((tmp_path / "compare" / "summary.json").read_text())
    assert [r["job"] for r in saved] == ["lora-a", "broken", "lora-b", "frozen", "full"]
    table = (tmp_path / "compare" / "summary.md").read_text()
    lines = table.splitlines()
    assert lines[0].startswith("| job | mode | trainable | peak MB | time s | val AUPR | test AUPR | state |")
    assert len([line for line in lines if line.startswith("| ")]) == 1 + 5
    assert f"- broken: {broken['error']}" in table
    assert "run-many summary" in printed and "FINISHED" in printed and "FAILED" in printed


def test_grid_spec_expands_base_times_grid(tmp_path: Path, common_set: list[str]) -> None:
    """No Ray: the base x grid form makes one validated job per combination, named after its values."""
    import yaml

    from protpeft.trainer.run_many import load_jobs

    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"name": "ppi", "task": "ppi"}))
    jobs_file = tmp_path / "jobs.yaml"
    jobs_file.write_text(
        yaml.safe_dump(
            {
                "base": str(base),
                "grid": {"mode": ["lora", "frozen"], "optim.lr": [1e-3, 3e-4]},
                "set": common_set,
                "resources": {"CPU": 1, "GPU": 0.25},
            }
        )
    )
    jobs, output = load_jobs(jobs_file)
    assert [j.name for j in jobs] == [
        "ppi-mode=lora-lr=0.001",
        "ppi-mode=lora-lr=0.0003",
        "ppi-mode=frozen-lr=0.001",
        "ppi-mode=frozen-lr=0.0003",
    ]
    assert [(j.cfg.mode, j.cfg.optim.lr) for j in jobs] == [
        ("lora", 1e-3),
        ("lora", 3e-4),
        ("frozen", 1e-3),
        ("frozen", 3e-4),
    ]
    assert all(j.cfg.engine.cpus_per_worker == 1 and j.cfg.engine.gpus_per_worker == 0.25 for j in jobs)
    assert output == tmp_path / "runs"

    with pytest.raises(ConfigError, match="unsupported resources"):
        load_jobs({"jobs": [{"name": "x", "resources": {"TPU": 1}}]})
    with pytest.raises(ConfigError, match="unique"):
        load_jobs([{"name": "x", "set": common_set}, {"name": "x", "set": common_set}])
    with pytest.raises(ConfigError, match="(?s)job bad: .*optim.lr"):
        load_jobs([{"name": "bad", "set": ["optim.lr=-1"]}])
