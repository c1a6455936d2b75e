"""Changing the model registry: register a run directory as a new version, set aliases; and pull a version.

A thin layer over ``MlflowClient`` returning frozen dataclasses (reading — show, list, compare — is in
:mod:`protpeft.registry.versions`). Every version's source is the pyfunc model of its MLflow run (``<run
artefacts>/model``, or ``model-N`` when an earlier upload was cut short; see :mod:`protpeft.registry.packaging`),
so ``mlflow models serve -m models:/NAME@alias`` serves it and :func:`pull` downloads only its ``artifacts/run``
directory.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import store
from .refs import ModelRef, RegistryError, check_alias, check_name, parse_ref
from .versions import FILES_TAG, MODEL_PATH_TAG, SIZE_TAG, ModelVersionInfo, _client, _info, _is, _resolve

if TYPE_CHECKING:
    from protpeft.artifact import RunArtifact

__all__ = ["pull", "register_run", "set_alias"]


def set_alias(name: str, version: int | str, alias: str, tracking_uri: str | None = None) -> ModelVersionInfo:
    """Point ``alias`` at ``version`` of ``name`` (moving it from any other version)."""
    check_alias(alias)
    ref = ModelRef(check_name(name), version=int(version))
    with _client(tracking_uri) as client:
        mv = _resolve(client, ref)  # clear error listing versions when it does not exist
        client.set_registered_model_alias(name, alias, mv.version)
        return _info(client, client.get_model_version(name, mv.version))


def _ensure_registered_model(client, name: str, artifact: RunArtifact) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description=f"protpeft {artifact.task} models")
    except MlflowException as err:
        if not _is(err, "RESOURCE_ALREADY_EXISTS"):
            raise


def _new_run_for(client, uri: str, run_dir: Path, artifact: RunArtifact, packaged) -> Any:
    """An MLflow run recording a run directory that was trained without tracking (params, final metrics, tags)."""
    from .tracking import MLflowLogger, git_commit, record_finished_run

    config = artifact.config
    experiment = (config.get("tracking") or {}).get("experiment") or "protpeft"
    experiment_id = store.ensure_experiment(client, experiment)
    tags = {"git_commit": git_commit(), "registered_from": str(run_dir.resolve())}
    run = client.create_run(experiment_id, run_name=config.get("name") or run_dir.name, tags=tags)
    logger = MLflowLogger(run.info.run_id, uri)
    if config:
        logger.log_config(config)
    logger.log_metrics({f"final_{k}": v for k, v in artifact.metrics.items()}, artifact.steps)
    record_finished_run(client, run.info.run_id, artifact, packaged)
    client.set_terminated(run.info.run_id, "FINISHED")
    return client.get_run(run.info.run_id)


def _recorded_run(client, run_dir: Path) -> str | None:
    """The tracked training run that ``run_dir``'s artefact names, when this store holds it (else None: the run was
    tracked elsewhere, or not at all). An unreadable artefact is left to the packaging step to report."""
    from mlflow.exceptions import MlflowException

    from protpeft.artifact import ArtifactError, read_artifact

    try:
        run_id = read_artifact(run_dir).mlflow_run_id
    except ArtifactError:
        return None
    if not run_id:
        return None
    try:
        client.get_run(run_id)
    except MlflowException as err:
        if _is(err, "RESOURCE_DOES_NOT_EXIST"):
            return None
        raise
    return run_id


def _describe(artifact: RunArtifact, run) -> str:
    note = run.data.tags.get("mlflow.note.content")
    if note:
        return note
    metrics = artifact.metrics
    shown = ", ".join(
        f"{k}={metrics[k]:.4f}" for k in ("val_aupr", "val_auroc", "val_f1", "test_aupr") if k in metrics
    )
    return (f"{artifact.task} {artifact.mode} on {artifact.base_model}" + (f"; {shown}" if shown else "")
            + f"; MLflow run {run.info.run_name} ({run.info.run_id})")  # fmt: skip


def register_run(
    run_dir: str | Path,
    name: str,
    alias: str | None = None,
    mlflow_run_id: str | None = None,
    description: str | None = None,
    tracking_uri: str | None = None,
) -> ModelVersionInfo:
    """Register a run directory as a new version of ``name`` (created when missing), optionally aliased.

    With ``mlflow_run_id`` (the run :func:`~protpeft.registry.tracking.logger_factory` created), or the training run
    the artefact recorded (``mlflow_run_id`` in ``protpeft.json``) when that run is in this store, the version links
    to that run and reuses its logged model, so registering adds no run; without either, a run recording the
    directory's config and metrics is created.
    The version copies the run's tags (lineage: task, mode, base model and fingerprint, dataset fingerprint, git
    commit) and description (else one is generated from the metrics), and records the artefact's size.

    Raises:
        ArtifactError: the directory is not a complete run, or holds files that are not safetensors/JSON.
        RegistryError: invalid name/alias, unknown MLflow run.
    """
    from mlflow.exceptions import MlflowException

    from .packaging import package_run
    from .run_lifecycle import logged_package
    from .tracking import run_tags

    check_name(name)
    if alias is not None:
        check_alias(alias)
    run_dir = Path(run_dir)
    with tempfile.TemporaryDirectory(prefix="protpeft-register-") as tmp, _client(tracking_uri) as client:
        mlflow_run_id = mlflow_run_id or _recorded_run(client, run_dir)
        packaged = mlflow_run_id and logged_package(client, mlflow_run_id, run_dir) or package_run(run_dir, Path(tmp))
        artifact = packaged.artifact
        if mlflow_run_id:
            try:
                run = client.get_run(mlflow_run_id)
            except MlflowException as err:
                raise RegistryError(
                    f"no MLflow run {mlflow_run_id!r} at {client.tracking_uri}: {err.message}"
                ) from None
            if MODEL_PATH_TAG not in run.data.tags:  # not logged, or its upload was cut short: upload it now
                from .tracking import record_finished_run

                record_finished_run(client, mlflow_run_id, artifact, packaged)
                run = client.get_run(mlflow_run_id)
        else:
            run = _new_run_for(client, client.tracking_uri, run_dir, artifact, packaged)
        _ensure_registered_model(client, name, artifact)
        copied = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}  # the run's own tags
        tags = {"git_commit": "unknown", **copied, **run_tags(artifact), SIZE_TAG: str(packaged.size_bytes),
                FILES_TAG: str(packaged.files)}  # fmt: skip
        source = f"{run.info.artifact_uri}/{run.data.tags[MODEL_PATH_TAG]}"  # the run's complete logged model
        mv = client.create_model_version(
            name, source=source, run_id=run.info.run_id, tags=tags,
            description=description or _describe(artifact, run),
        )  # fmt: skip
        if alias is not None:
            client.set_registered_model_alias(name, alias, mv.version)
        return _info(client, client.get_model_version(name, mv.version))


def pull(ref: str | ModelRef, to: str | Path, tracking_uri: str | None = None, verify: bool = True) -> Path:
    """Download a version's artefact files (the run directory, nothing else) into ``to``; return ``to``.

    ``to`` must not exist or be empty. With ``verify`` the files are checked against the manifest written at
    registration (types, presence, sizes, sha256) and ``to`` is removed again when they fail.

    Raises:
        RegistryError: unknown name/alias/version, or ``to`` is a non-empty directory.
        ArtifactError: the stored artefact is corrupted or holds refused file types.
    """
    import mlflow.artifacts

    from .packaging import RUN_ARTIFACT_PATH, verify_run_dir

    to = Path(to)
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise RegistryError(f"{to}: exists and is not an empty directory; pull into a new one")
    with _client(tracking_uri) as client:
        mv = _resolve(client, parse_ref(ref))
        to.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".protpeft-pull-", dir=to.parent) as tmp:
            got = mlflow.artifacts.download_artifacts(artifact_uri=f"{mv.source.rstrip('/')}/{RUN_ARTIFACT_PATH}",
                                                      dst_path=tmp, tracking_uri=client.tracking_uri)  # fmt: skip
            if to.exists():
                to.rmdir()
            shutil.move(got, to)
    if verify:
        try:
            verify_run_dir(to)
        except Exception:
            shutil.rmtree(to, ignore_errors=True)
            raise
    return to
