"""Reading the model registry: resolve a reference to its version, with lineage and its run's metrics; list and
compare versions.

A thin layer over ``MlflowClient`` returning frozen dataclasses (changes — register, alias, pull — are in
:mod:`protpeft.registry.models`). Lookups that miss raise :class:`~protpeft.registry.refs.RegistryError` naming
what does exist.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from . import store
from .refs import ModelRef, RegistryError, check_name, parse_ref

__all__ = [
    "FILES_TAG",
    "MODEL_PATH_TAG",
    "SIZE_TAG",
    "ModelVersionInfo",
    "RegisteredModelInfo",
    "compare_versions",
    "get_version",
    "list_models",
    "list_versions",
]

SIZE_TAG = "artifact_size_bytes"
FILES_TAG = "artifact_files"
"""Run and version tags with the logged artefact's size and file count (a registered version copies its run's)."""
MODEL_PATH_TAG = "protpeft.model_path"
"""Run tag: where among the run's artefacts its complete pyfunc model is. Set after the upload finished, so a run
whose upload was cut short (an interrupted Tune trial) has none, and logging it again uploads to a fresh path."""
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
        raise RegistryError(f"MLflow at {uri}: {_first_line(err)}") from None


def _is(err: Exception, code: str) -> bool:
    return getattr(err, "error_code", None) == code


def _first_line(err: Exception) -> str:
    """An MLflow message's first line (database errors go on with the SQL statement and its parameters)."""
    lines = str(getattr(err, "message", "") or err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


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
    """The run's final metrics and costs; none when the version has no run or its run is gone (``mlflow gc``).

    Raises:
        RegistryError: the run exists but cannot be read (a broken store, a server error).
    """
    from mlflow.exceptions import MlflowException

    if not run_id:
        return {}, {}
    try:
        logged = client.get_run(run_id).data.metrics
    except MlflowException as err:
        if _is(err, "RESOURCE_DOES_NOT_EXIST"):
            return {}, {}
        raise RegistryError(
            f"cannot read the metrics of MLflow run {run_id} at {client.tracking_uri}: {_first_line(err)}"
        ) from None
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
