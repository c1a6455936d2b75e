"""A run directory as an MLflow model: the artefact files plus a manifest, wrapped as a models-from-code pyfunc.

What a registered version stores (the same for adapters, frozen heads and whole fine-tuned backbones)::

    model/                       the version's source: an MLflow pyfunc model, no pickle
      MLmodel, pyfunc_model.py   MLflow's description + the code file (ends in mlflow.models.set_model)
      requirements.txt, ...      the environment MLflow records
      artifacts/run/             the protpeft run directory: protpeft.json, head.safetensors, adapter_*/backbone/,
        manifest.json            + size and sha256 of every file, checked before anything is loaded

Checkpoints (``checkpoints/``: optimizer state for resuming) are not part of the artefact and are left out.
Torch-backed modules are imported inside functions so that ``import protpeft.registry`` (and ``protpeft --help``)
stays fast.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .refs import RegistryError

if TYPE_CHECKING:
    from protpeft.artifact import RunArtifact

__all__ = [
    "MANIFEST_FILE",
    "MODEL_PATH",
    "RUN_ARTIFACT_PATH",
    "PackagedRun",
    "package_run",
    "save_pyfunc_model",
    "stage_run_dir",
    "verify_run_dir",
]

MANIFEST_FILE = "manifest.json"
MODEL_PATH = "model"  # where a run's pyfunc model lives among its MLflow artefacts
RUN_ARTIFACT_PATH = "artifacts/run"  # where the run directory lives inside that model
EXCLUDED_DIRS = ("checkpoints",)


@dataclass(frozen=True)
class PackagedRun:
    path: Path
    """The MLflow model directory (upload this)."""
    artifact: RunArtifact
    """The run's ``protpeft.json``."""
    size_bytes: int
    """Total size of the run directory's artefact files."""
    files: int


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stage_run_dir(run_dir: str | Path, dest: Path) -> tuple[RunArtifact, int, int]:
    """Copy a run directory's artefact files (not its checkpoints) to ``dest`` and write the manifest.

    Returns (its artefact record, total bytes, file count).

    Raises:
        ArtifactError: not a complete run directory, or it holds files that are not safetensors/JSON.
    """
    from protpeft.artifact import ArtifactError, check_artifact_files, read_artifact, write_json_atomic

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArtifactError(f"{run_dir}: not a directory")
    read_artifact(run_dir)  # "not a protpeft run directory" before anything else
    dest.mkdir(parents=True, exist_ok=False)
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir)
        if not path.is_file() or rel.parts[0] in EXCLUDED_DIRS or rel.as_posix() == MANIFEST_FILE:
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest / rel)
    artifact = check_artifact_files(dest)
    files = {p.relative_to(dest).as_posix(): p for p in sorted(dest.rglob("*")) if p.is_file()}
    manifest = {rel: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for rel, p in files.items()}
    write_json_atomic(dest / MANIFEST_FILE, {"files": manifest})
    return artifact, sum(f["bytes"] for f in manifest.values()), len(manifest)


def verify_run_dir(run_dir: str | Path) -> RunArtifact:
    """Check a downloaded run directory against its manifest before anything in it is loaded; return its record.

    Raises:
        ArtifactError: a file type other than safetensors/JSON, a missing, extra, truncated or altered file.
    """
    from protpeft.artifact import ArtifactError, check_artifact_files

    run_dir = Path(run_dir)
    artifact = check_artifact_files(run_dir)  # refuses pickles and incomplete artefacts first
    manifest_path = run_dir / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())["files"]
    except FileNotFoundError:
        raise ArtifactError(f"{run_dir}: no {MANIFEST_FILE}; this artefact was not written by the registry") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ArtifactError(f"{manifest_path}: corrupted manifest ({err})") from None
    present = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()} - {MANIFEST_FILE}
    missing = sorted(set(manifest) - present)
    extra = sorted(present - set(manifest))
    if missing:
        raise ArtifactError(f"{run_dir}: artefact is missing {', '.join(missing)} (listed in its manifest)")
    if extra:
        raise ArtifactError(f"{run_dir}: artefact holds files its manifest does not list: {', '.join(extra)}")
    for rel, expected in manifest.items():
        path = run_dir / rel
        if path.stat().st_size != expected["bytes"] or _sha256(path) != expected["sha256"]:
            raise ArtifactError(
                f"{path}: corrupted file: its size or sha256 differs from the manifest written at registration"
            )
    return artifact


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for dist in ("protpeft", "mlflow", "torch", "transformers", "peft", "safetensors", "pandas"):
        try:
            pins.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            pins.append(dist)
    return pins


def _signature(artifact: RunArtifact):
    """The task's input columns (``seq_a``, ``seq_b`` / ``sequence``) → its probability columns."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    spec = artifact.task_spec
    inputs = Schema([ColSpec("string", column) for column in spec.input_columns])
    outputs = Schema([ColSpec("double", column) for column in spec.output_columns(artifact.label_names)])
    return ModelSignature(inputs=inputs, outputs=outputs)


def save_pyfunc_model(staged_run_dir: Path, artifact: RunArtifact, dest: Path) -> Path:
    """Write the MLflow model directory for a staged run directory: models-from-code, so nothing is pickled."""
    import mlflow

    code = Path(__file__).with_name("pyfunc_model.py")
    with warnings.catch_warnings():
        # An input example would make MLflow load the whole model at save time to check it; the explicit
        # signature already describes the input.
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        mlflow.pyfunc.save_model(
            path=str(dest),
            python_model=str(code),
            artifacts={"run": str(staged_run_dir)},
            signature=_signature(artifact),
            pip_requirements=_requirements(),
            metadata={"protpeft_task": artifact.task, "protpeft_mode": artifact.mode},
        )
    leftovers = sorted(p.name for p in dest.rglob("*.pkl"))
    if leftovers:  # models-from-code must not pickle; fail loudly if an MLflow upgrade changes that
        raise RegistryError(f"{dest}: MLflow wrote pickle files {leftovers}; refusing to register")
    return dest


def package_run(run_dir: str | Path, workdir: Path) -> PackagedRun:
    """Stage ``run_dir`` under ``workdir`` and wrap it as an MLflow pyfunc model directory."""
    staged = Path(workdir) / "run"
    artifact, size, files = stage_run_dir(run_dir, staged)
    model_dir = save_pyfunc_model(staged, artifact, Path(workdir) / MODEL_PATH)
    return PackagedRun(model_dir, artifact, size, files)
