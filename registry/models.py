"""The model registry: register a run directory as a new version, aliases, list / show / compare, pull.

A thin layer over ``MlflowClient`` returning frozen dataclasses. Every version's source is the pyfunc model of its
MLflow run (``<run artefacts>/model``, see :mod:`protpeft.registry.packaging`), so ``mlflow models serve -m
models:/NAME@alias`` serves it and :func:`pull` downloads only its ``artifacts/run`` directory. Lookups that miss
raise :class:`~protpeft.registry.refs.RegistryError` naming what does exist.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import store
from .refs import ModelRef, RegistryError, check_alias, check_name, parse_ref

__all__ = [
    "ModelVersionInfo",
    "RegisteredModelInfo",
    "compare_versions",
    "get_version",
    "list_models",
    "list_versions",
    "pull",
    "register_run",
    "set_alias",
]

SIZE_TAG = "artifact_size_bytes"
FILES_TAG = "artifact_files"
_COST_METRICS = ("params_trainable", "params_total", "peak_memory_mb", "wall_seconds")


@dataclass(frozen=True)
class ModelVersionInfo:
    """One registered version with its lineage (tags copied from its run) and its run's final metrics."""

    name: str
    version: int
    aliases: tuple[str, ...]
    run_id: str | None
    source: str
    description: str
    created: str
    """ISO 8601, UTC."""
    tags: dict[str, str] = field(default_factory=dict, hash=False)
    metrics: dict[str, float] = field(default_factory=dict, hash=False)
    """Final val/test metrics of the run (``final_`` prefix dropped)."""
    costs: dict[str, float] = field(default_factory=dict, hash=False)
    """Parameter counts, peak memory (MB) and wall time (s) of the run, when it recorded them."""

    def __str__(self) -> str:
        return f"{self.name}/{self.version}" + "".join(f"@{a}" for a in self.aliases)

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.name, version=self.version)

    @property
    def size_bytes(self) -> int | None:
        value = self.tags.get(SIZE_TAG)
        return int(value) if value and value.isdigit() else None

    @property
    def task(self) -> str | None:
        return self.tags.get("task")

    @property
    def mode(self) -> str | None:
        return self.tags.get("mode")

    @property
    def base_model(self) -> str | None:
        return self.tags.get("base_model")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["aliases"] = list(self.aliases)
        data["size_bytes"] = self.size_bytes
        return data


@dataclass(frozen=True)
class RegisteredModelInfo:
    name: str
    description: str
    latest_version: int | None
    aliases: dict[str, int] = field(default_factory=dict, hash=False)
    """alias → version."""
    updated: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _iso(millis: int | None) -> str:
    if not millis:
        return ""
    return datetime.fromtimestamp(millis / 1000, tz=timezone.utc).isoformat(timespec="seconds")


@contextmanager
def _client(tracking_uri: str | None) -> Iterator[Any]:
    """A client on the (created) store; MLflow errors nobody translated become one-line registry errors."""
    from mlflow.exceptions import MlflowException

    uri = store.ensure_store(tracking_uri)
    try:
        yield store.client(uri)
    except MlflowException as err:
        raise RegistryError(f"MLflow at {uri}: {err.message}") from None


def _is(err: Exception, code: str) -> bool:
    return getattr(err, "error_code", None) == code


# --------------------------------------------------------------------------------------------------------------
# lookups


def _model_names(client) -> list[str]:
    names, token = [], None
    while True:
        page = client.search_registered_models(max_results=1000, page_token=token)
        names.extend(m.name for m in page)
        token = page.token
        if not token:
            return sorted(names)


def _registered_model(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as err:
        if not _is(err, "RESOURCE_DOES_NOT_EXIST"):
            raise
    names = _model_names(client)
    known = f"registered models: {', '.join(names)}" if names else "the registry holds no models yet"
    raise RegistryError(f"no registered model {name!r} at {client.tracking_uri}; {known}")


def _versions(client, name: str) -> list:
    found = client.search_model_versions(filter_string=f"name='{name}'")
    return sorted(found, key=lambda mv: int(mv.version))


def _what_exists(client, name: str, model) -> str:
    versions = [str(mv.version) for mv in _versions(client, name)]
    aliases = ", ".join(f"{a} → {v}" for a, v in sorted(model.aliases.items())) or "none"
    return f"versions: {', '.join(versions) or 'none'}; aliases: {aliases}"


def _resolve(client, ref: ModelRef):
    """The MLflow ModelVersion a reference points at."""
    from mlflow.exceptions import MlflowException

    model = _registered_model(client, ref.name)
    if ref.alias is not None:
        if ref.alias not in model.aliases:
            raise RegistryError(
                f"model {ref.name!r} has no alias {ref.alias!r}; {_what_exists(client, ref.name, model)}"
            )
        return client.get_model_version(ref.name, str(model.aliases[ref.alias]))
    if ref.version is not None:
        try:
            return client.get_model_version(ref.name, str(ref.version))
        except MlflowException as err:
            if not _is(err, "RESOURCE_DOES_NOT_EXIST"):
                raise
            raise RegistryError(
                f"model {ref.name!r} has no version {ref.version}; {_what_exists(client, ref.name, model)}"
            ) from None
    versions = _versions(client, ref.name)
    if not versions:
        raise RegistryError(f"model {ref.name!r} has no versions yet")
    return versions[-1]


def _run_metrics(client, run_id: str | None) -> tuple[dict[str, float], dict[str, float]]:
    from mlflow.exceptions import MlflowException

    if not run_id:
        return {}, {}
    try:
        logged = client.get_run(run_id).data.metrics
    except MlflowException:
        return {}, {}
    final = {k.removeprefix("final_"): v for k, v in sorted(logged.items()) if k.startswith("final_")}
    costs = {k: logged[k] for k in _COST_METRICS if k in logged}
    return final, costs


def _aliases_of(model) -> dict[int, tuple[str, ...]]:
    """version → aliases (version searches do not fill in aliases, the registered model does)."""
    out: dict[int, list[str]] = {}
    for alias, version in model.aliases.items():
        out.setdefault(int(version), []).append(alias)
    return {v: tuple(sorted(a)) for v, a in out.items()}


def _info(client, mv, model=None) -> ModelVersionInfo:
    """``model`` (the registered model) supplies the aliases; fetched when not given."""
    model = model or client.get_registered_model(mv.name)
    metrics, costs = _run_metrics(client, mv.run_id)
    return ModelVersionInfo(
        name=mv.name, version=int(mv.version), aliases=_aliases_of(model).get(int(mv.version), ()), run_id=mv.run_id,
        source=mv.source, description=mv.description or "", created=_iso(mv.creation_timestamp),
        tags=dict(mv.tags or {}), metrics=metrics, costs=costs,
    )  # fmt: skip


def get_version(ref: str | ModelRef, tracking_uri: str | None = None) -> ModelVersionInfo:
    """Resolve ``name``, ``name@alias`` or ``name/version`` to its version, with lineage and metrics.

    Raises:
        RegistryError: unknown name, alias or version; the message lists the models, versions and aliases that exist.
    """
    ref = parse_ref(ref)
    with _client(tracking_uri) as client:
        return _info(client, _resolve(client, ref))


def list_models(tracking_uri: str | None = None) -> list[RegisteredModelInfo]:
    """Every registered model, by name."""
    with _client(tracking_uri) as client:
        out = []
        for name in _model_names(client):
            model = client.get_registered_model(name)
            latest = max((int(mv.version) for mv in model.latest_versions or ()), default=None)
            aliases = {a: int(v) for a, v in sorted(model.aliases.items())}
            out.append(RegisteredModelInfo(name, model.description or "", latest, aliases,
                                           _iso(model.last_updated_timestamp)))  # fmt: skip
        return out


def list_versions(name: str, tracking_uri: str | None = None) -> list[ModelVersionInfo]:
    """Every version of ``name``, oldest first."""
    with _client(tracking_uri) as client:
        model = _registered_model(client, check_name(name))
        return [_info(client, mv, model) for mv in _versions(client, name)]


def compare_versions(
    name: str, metrics: Sequence[str] | None = None, tracking_uri: str | None = None
) -> list[dict[str, Any]]:
    """A versions × metrics table: one row per version (version, aliases, mode, size, created, then the final
    metrics: those named in ``metrics``, else every one any version has; missing values are None)."""
    versions = list_versions(name, tracking_uri)
    metric_names = list(metrics) if metrics else sorted({k for v in versions for k in v.metrics})
    rows = []
    for v in versions:
        row: dict[str, Any] = {"version": v.version, "aliases": ",".join(v.aliases), "mode": v.mode,
                               "size_bytes": v.size_bytes, "created": v.created}  # fmt: skip
        row.update({m: v.metrics.get(m) for m in metric_names})
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------------------
# changes


def set_alias(name: str, version: int | str, alias: str, tracking_uri: str | None = None) -> ModelVersionInfo:
    """Point ``alias`` at ``version`` of ``name`` (moving it from any other version)."""
    check_alias(alias)
    ref = ModelRef(check_name(name), version=int(version))
    with _client(tracking_uri) as client:
        mv = _resolve(client, ref)  # clear error listing versions when it does not exist
        client.set_registered_model_alias(name, alias, mv.version)
        return _info(client, client.get_model_version(name, mv.version))


def _ensure_registered_model(client, name: str, meta: dict[str, Any]) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description=f"protpeft {meta['task']} models")
    except MlflowException as err:
        if not _is(err, "RESOURCE_ALREADY_EXISTS"):
            raise


def _has_model(client, run_id: str) -> bool:
    from .packaging import MODEL_PATH

    return any(f.path == f"{MODEL_PATH}/MLmodel" for f in client.list_artifacts(run_id, MODEL_PATH))


def _new_run_for(client, uri: str, run_dir: Path, meta: dict[str, Any], packaged) -> Any:
    """An MLflow run recording a run directory that was trained without tracking (params, final metrics, tags)."""
    from .tracking import MLflowLogger, git_commit, record_finished_run

    config = meta.get("config") or {}
    experiment = (config.get("tracking") or {}).get("experiment") or "protpeft"
    experiment_id = store.ensure_experiment(client, experiment)
    tags = {"git_commit": git_commit(), "registered_from": str(run_dir.resolve())}
    run = client.create_run(experiment_id, run_name=config.get("name") or run_dir.name, tags=tags)
    logger = MLflowLogger(run.info.run_id, uri)
    if config:
        logger.log_config(config)
    logger.log_metrics({f"final_{k}": v for k, v in (meta.get("metrics") or {}).items()}, int(meta.get("steps") or 0))
    record_finished_run(client, run.info.run_id, meta, packaged)
    client.set_terminated(run.info.run_id, "FINISHED")
    return client.get_run(run.info.run_id)


def _describe(meta: dict[str, Any], run) -> str:
    note = run.data.tags.get("mlflow.note.content")
    if note:
        return note
    metrics = meta.get("metrics") or {}
    shown = ", ".join(
        f"{k}={metrics[k]:.4f}" for k in ("val_aupr", "val_auroc", "val_f1", "test_aupr") if k in metrics
    )
    return (f"{meta['task']} {meta['mode']} on {meta['base_model']}" + (f"; {shown}" if shown else "")
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

    With ``mlflow_run_id`` (the run :func:`~protpeft.registry.tracking.logger_factory` created) the version links to
    that run and reuses its logged model; without it a run recording the directory's config and metrics is created.
    The version copies the run's tags (lineage: task, mode, base model and fingerprint, dataset fingerprint, git
    commit) and description (else one is generated from the metrics), and records the artefact's size.

    Raises:
        ArtifactError: the directory is not a complete run, or holds files that are not safetensors/JSON.
        RegistryError: invalid name/alias, unknown MLflow run.
    """
    from mlflow.exceptions import MlflowException

    from .packaging import MODEL_PATH, package_run
    from .run_lifecycle import logged_package
    from .tracking import run_tags

    check_name(name)
    if alias is not None:
        check_alias(alias)
    run_dir = Path(run_dir)
    with tempfile.TemporaryDirectory(prefix="protpeft-register-") as tmp, _client(tracking_uri) as client:
        packaged = mlflow_run_id and logged_package(client, mlflow_run_id, run_dir) or package_run(run_dir, Path(tmp))
        meta = packaged.meta
        if mlflow_run_id:
            try:
                run = client.get_run(mlflow_run_id)
            except MlflowException as err:
                raise RegistryError(
                    f"no MLflow run {mlflow_run_id!r} at {client.tracking_uri}: {err.message}"
                ) from None
            if not _has_model(client, mlflow_run_id):
                from .tracking import record_finished_run

                record_finished_run(client, mlflow_run_id, meta, packaged)
                run = client.get_run(mlflow_run_id)
        else:
            run = _new_run_for(client, client.tracking_uri, run_dir, meta, packaged)
        _ensure_registered_model(client, name, meta)
        copied = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}  # the run's own tags
        tags = {"git_commit": "unknown", **copied, **run_tags(meta), SIZE_TAG: str(packaged.size_bytes),
                FILES_TAG: str(packaged.files)}  # fmt: skip
        mv = client.create_model_version(
            name, source=f"{run.info.artifact_uri}/{MODEL_PATH}", run_id=run.info.run_id, tags=tags,
            description=description or _describe(meta, run),
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
