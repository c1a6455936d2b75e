"""The run artefact record (``protpeft.json``): written and read in one place, old files still read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protpeft.artifact import (
    ARTIFACT_FILE,
    SCHEMA_VERSION,
    ArtifactError,
    RunArtifact,
    check_artifact_files,
    read_artifact,
    write_artifact,
)
from protpeft.models.classifier import ClassificationHead

pytestmark = pytest.mark.unit

# protpeft.json as runs wrote it before it had a schema version (and no head width of its own)
VERSION_1 = {
    "task": "symmetry",
    "mode": "frozen",
    "base_model": "facebook/esm2_t6_8M_UR50D",
    "base_fingerprint": "0123456789abcdef",
    "label_names": ["C1", "C2"],
    "pooling": "mean",
    "crop": 512,
    "metrics": {"val_aupr": 0.75, "test_aupr": 0.5},
    "params": {"total": 100, "trainable": 10},
    "config": {"name": "old-run", "model": {"head_hidden": 32}},
    "protpeft_version": "0.1.0",
    "dataset_fingerprint": "fedcba9876543210",
    "data_notes": ["seeded random split"],
    "split_counts": {"train": 8, "val": 1, "test": 1},
    "steps": 7,
    "seconds": 1.5,
    "peak_memory_mb": 300.0,
    "strategy": "local",
    "workers": 1,
    "embedded_sequences": 10,
    "created": "2026-01-01T00:00:00+00:00",
}


def write_json(run_dir: Path, data: dict) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ARTIFACT_FILE).write_text(json.dumps(data))
    return run_dir


def test_a_file_without_schema_version_reads_as_version_1(tmp_path: Path) -> None:
    artifact = read_artifact(write_json(tmp_path / "old", VERSION_1))
    assert artifact.schema_version == 1
    assert artifact.head_hidden == 32  # the width its recorded config asked for
    assert (artifact.task, artifact.mode, artifact.steps) == ("symmetry", "frozen", 7)
    assert artifact.label_names == ("C1", "C2")
    assert artifact.run_name == "old-run" and artifact.mlflow_run_id is None
    assert artifact.task_spec.members == 1 and artifact.mode_spec.holds == "head"


def test_written_artifact_keeps_todays_keys_and_reads_back(tmp_path: Path) -> None:
    artifact = RunArtifact.from_json({**VERSION_1, "schema_version": SCHEMA_VERSION, "head_hidden": 4})
    run_dir = write_artifact(tmp_path / "run", artifact, ClassificationHead(8, 4, 2, 0.0))
    raw = json.loads((run_dir / ARTIFACT_FILE).read_text())
    assert set(VERSION_1) <= set(raw)  # older readers find every key they know
    assert (raw["schema_version"], raw["head_hidden"], raw["mlflow_run_id"]) == (SCHEMA_VERSION, 4, None)
    assert check_artifact_files(run_dir) == artifact


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task": None}, "missing key 'task'"),
        ({"mode": "sideways"}, "mode: Input should be"),
        ({"schema_version": SCHEMA_VERSION + 1}, "written by a newer protpeft"),
    ],
)
def test_bad_records_are_clear_errors(tmp_path: Path, change: dict, message: str) -> None:
    data = {k: v for k, v in {**VERSION_1, **change}.items() if v is not None}
    with pytest.raises(ArtifactError, match=message):
        read_artifact(write_json(tmp_path / "bad", data))


def test_required_files_come_from_the_mode(tmp_path: Path) -> None:
    run_dir = write_json(tmp_path / "lora", {**VERSION_1, "mode": "lora"})
    (run_dir / "head.safetensors").write_bytes(b"")
    with pytest.raises(ArtifactError, match="incomplete lora artefact, missing adapter_config.json"):
        check_artifact_files(run_dir)
