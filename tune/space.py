"""TUNE.yaml: a base run config, a search space over dotted ``RunConfig`` keys, and how to search it.

::

    # configs/tune/demo.yaml
    base: configs/demo/ppi_lora.yaml      # or an inline `config:` mapping; paths relative to the current directory
    set: [optim.max_steps=12]             # overrides of the base, as --set
    name: demo                            # experiment name (default: the file's stem)
    storage: runs/tune                    # experiment directory = <storage>/<name>
    search: {algorithm: random, num_samples: 6, max_concurrent: 2, metric: val_aupr, mode: max, seed: 0}
    asha: {enabled: true, max_t: 12, grace_period: 4, reduction_factor: 2}   # time = the reported optimizer step
    resources: {CPU: 1, GPU: 0.25}        # per trial *worker* (a trial is a Ray Train run of engine.workers)
    space:
      optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
      lora.r: {grid: [4, 8, 16]}
      lora.target_modules: {choice: [[key, value], [query, key, value]]}
      model.pooling: {choice: [mean, cls]}
      optim.warmup_ratio: {uniform: [0.0, 0.2]}
      model.head_hidden: {randint: [32, 257]}   # [lo, hi): hi excluded

Every space key must be a field of ``RunConfig``; a file is checked by building the run config for each listed
value (and both ends of each range), so a trial's config validates exactly like a normal run. Errors name the file,
the line and the key. This module imports neither Ray nor MLflow; :meth:`SearchSpec.param_space` imports Ray Tune
inside.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from protpeft.config import (
    RunConfig,
    apply_overrides,
    config_from_dict,
    read_yaml_mapping,
    worker_resource_values,
)
from protpeft.errors import ConfigError

__all__ = [
    "AshaSettings",
    "Domain",
    "SearchSettings",
    "SearchSpec",
    "TrialResources",
    "TuneSpec",
    "load_search",
    "restore_search",
    "search_from_dict",
]

Algorithm = Literal["grid", "random", "optuna"]
DEFAULT_SAMPLES = {"grid": 1, "random": 8, "optuna": 8}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class Domain(_Section):
    """One key's values: exactly one of ``grid``, ``choice``, ``uniform``, ``loguniform``, ``randint``."""

    grid: list[Any] | None = Field(None, min_length=1)
    """Every value is tried (crossed with the other grid keys; num_samples repeats the whole grid)."""
    choice: list[Any] | None = Field(None, min_length=1)
    """Each trial samples one value."""
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None
    """Integers in [lo, hi): hi is excluded, as in Python's range."""

    @model_validator(mode="after")
    def _exactly_one(self) -> Domain:
        given = [k for k in ("grid", "choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of grid, choice, uniform, loguniform, randint")
        lo_hi = self.uniform or self.loguniform or self.randint
        if lo_hi is not None and not lo_hi[0] < lo_hi[1]:
            raise ValueError(f"{given[0]}: lower bound {lo_hi[0]} must be below upper bound {lo_hi[1]}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform: bounds must be positive")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("grid", "choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None)

    @property
    def values(self) -> list[Any] | None:
        """The listed values of a grid or choice (None for ranges)."""
        return self.grid if self.grid is not None else self.choice

    @property
    def structured(self) -> bool:
        """Values that are lists or mappings travel through Tune as JSON strings (Optuna accepts only scalars)."""
        return any(isinstance(v, list | dict) for v in self.values or [])

    def probes(self) -> list[Any]:
        """Values a trial can take that are checked against the config: all listed ones, both ends of a range."""
        if self.values is not None:
            return list(self.values)
        lo, hi = self.uniform or self.loguniform or self.randint  # type: ignore[misc]
        return [lo, hi - 1] if self.randint is not None else [lo, hi]

    def log_scale(self) -> bool:
        """Whether plots should put this key on a log axis."""
        if self.loguniform is not None:
            return True
        numbers = [v for v in self.values or [] if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(numbers) < 3 or len(numbers) != len(self.values or []) or min(numbers) <= 0:
            return False
        return max(numbers) / min(numbers) >= 100


class SearchSettings(_Section):
    algorithm: Algorithm = "random"
    """grid / random: Ray Tune's BasicVariantGenerator; optuna: OptunaSearch (TPE) behind a ConcurrencyLimiter."""
    num_samples: int | None = Field(None, ge=1)
    """Trials (random, optuna) or repeats of the whole grid (grid); default 8 (random, optuna) or 1 (grid)."""
    max_concurrent: int = Field(2, ge=1)
    """Trials running at once (also capped by what the cluster can hold)."""
    metric: str = "val_aupr"
    """A metric every evaluation reports (val_*), the one the search optimises and the report analyses."""
    mode: Literal["max", "min"] = "max"
    seed: int = 0
    """Seed of the sampler (the same file samples the same trials)."""
    max_trial_failures: int = Field(0, ge=-1)
    """Times Tune retries a failed trial (worker-level restarts are engine.max_failures); -1: unlimited."""

    @model_validator(mode="after")
    def _metric_is_reported(self) -> SearchSettings:
        if not self.metric.startswith("val_"):
            raise ValueError(f"metric {self.metric!r}: the search needs a metric every evaluation reports (val_*)")
        return self

    @property
    def samples(self) -> int:
        return self.num_samples or DEFAULT_SAMPLES[self.algorithm]


class AshaSettings(_Section):
    enabled: bool = False
    max_t: int | None = Field(None, ge=1)
    """Optimizer steps of a full trial; default the base config's optim.max_steps."""
    grace_period: int = Field(1, ge=1)
    """Steps every trial runs before it can be stopped."""
    reduction_factor: float = Field(2, gt=1)


class TrialResources(_Section):
    """Per trial worker; a trial runs engine.workers workers (fractions of a GPU pack several on one card)."""

    CPU: float | None = Field(None, gt=0)
    GPU: float | None = Field(None, ge=0)

    def values(self) -> dict[str, float]:
        """The engine keys these resources set, e.g. ``{"engine.cpus_per_worker": 1.0}``."""
        return worker_resource_values(self.model_dump(exclude_none=True))


class TuneSpec(_Section):
    base: Path | None = None
    """Base run config (YAML), relative to the current directory like every path in protpeft configs."""
    config: dict[str, Any] | None = None
    """Inline base config (instead of `base`)."""
    set: list[str] = Field(default_factory=list)
    """Overrides of the base, as `protpeft train --set`."""
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """Experiment name (default: the TUNE file's stem); the experiment directory is <storage>/<name>."""
    storage: Path = Path("runs/tune")
    """Where experiments live (shared storage on a multi-node cluster)."""
    search: SearchSettings = Field(default_factory=SearchSettings)
    asha: AshaSettings = Field(default_factory=AshaSettings)
    resources: TrialResources = Field(default_factory=TrialResources)
    space: dict[str, Domain] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_base(self) -> TuneSpec:
        if self.base is not None and self.config is not None:
            raise ValueError("give either `base` (a config file) or `config` (inline), not both")
        if self.search.algorithm == "optuna" and any(d.grid is not None for d in self.space.values()):
            raise ValueError("optuna samples its trials: use `choice` instead of `grid`")
        if self.search.algorithm == "grid" and not any(d.grid is not None for d in self.space.values()):
            raise ValueError("algorithm grid needs at least one `grid` key (or use algorithm random)")
        return self


# --------------------------------------------------------------------------------------------------------------
# the resolved search: spec + base config


def _config_fields(model: type[BaseModel], path: list[str]) -> str | None:
    """None when ``path`` is a leaf field of ``model``; else what is wrong with it."""
    fields = model.model_fields
    head, rest = path[0], path[1:]
    if head not in fields:
        return f"{head!r} is not a field here (fields: {', '.join(sorted(fields))})"
    annotation = fields[head].annotation
    is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
    if rest:
        return _config_fields(annotation, rest) if is_section else f"{head!r} has no sub-keys"
    return f"{head!r} is a section; search one of its keys" if is_section else None


class SearchSpec:
    """A validated TUNE file: the spec, the base config (as a raw mapping, overrides applied) and where it came from.

    Trials get their config from :meth:`trial_config`, which the search driver also uses, so the experiment and its
    trials agree on what a sampled value means.
    """

    def __init__(self, spec: TuneSpec, base: dict[str, Any], source: str, name: str) -> None:
        self.spec, self.base, self.source, self.name = spec, base, source, name

    @property
    def keys(self) -> list[str]:
        return list(self.spec.space)

    def experiment_dir(self) -> Path:
        return (Path(self.spec.storage).expanduser() / self.name).resolve()

    def encoded_keys(self) -> list[str]:
        return [k for k, d in self.spec.space.items() if d.structured]

    def decode(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """Tune's sampled values (JSON strings for structured choices) → config values, for the space's keys."""
        out = {}
        for key in self.spec.space:
            if key in sampled:
                value = sampled[key]
                out[key] = json.loads(value) if key in self.encoded_keys() and isinstance(value, str) else value
        return out

    def trial_config(self, values: dict[str, Any], identity: dict[str, Any] | None = None) -> RunConfig:
        """The run config of one trial: base, then the sampled ``values`` (decoded), then ``identity`` (dotted keys
        with typed values, e.g. the trial's name), validated once."""
        raw = apply_overrides(self.base, None, {**values, **(identity or {})})
        return config_from_dict(raw, f"{self.source} (trial)")

    def sample_config(self) -> RunConfig:
        """The config of a trial taking each key's first probe value (used for sizing and defaults)."""
        return self.trial_config({k: d.probes()[0] for k, d in self.spec.space.items()})

    def param_space(self) -> dict[str, Any]:
        """The space as Ray Tune domains (flat dotted keys)."""
        from ray import tune

        space: dict[str, Any] = {}
        for key, dom in self.spec.space.items():
            values = dom.values
            if values is not None and dom.structured:
                values = [json.dumps(v) for v in values]
            if dom.grid is not None:
                space[key] = tune.grid_search(values)
            elif dom.choice is not None:
                space[key] = tune.choice(values)
            elif dom.uniform is not None:
                space[key] = tune.uniform(*dom.uniform)
            elif dom.loguniform is not None:
                space[key] = tune.loguniform(*dom.loguniform)
            else:
                space[key] = tune.randint(*dom.randint)  # type: ignore[misc]
        return space

    def asha_max_t(self) -> int:
        """ASHA's horizon in optimizer steps: ``asha.max_t``, else the base's ``optim.max_steps``."""
        if self.spec.asha.max_t is not None:
            return self.spec.asha.max_t
        steps = self.sample_config().optim.max_steps
        if steps is None:
            raise ConfigError(f"{self.source}: asha.max_t is needed when the base config sets no optim.max_steps")
        return steps

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: enough to rebuild this search (``search_from_dict``) when an experiment is resumed."""
        return {"spec": self.spec.model_dump(mode="json"), "base": self.base, "source": self.source, "name": self.name}


# --------------------------------------------------------------------------------------------------------------
# loading


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    return read_yaml_mapping(path, "TUNE file", "a TUNE file must be a mapping with base/config, space, search, ...")


def _base_raw(spec: TuneSpec, source: str) -> dict[str, Any]:
    raw: dict[str, Any] = copy.deepcopy(spec.config or {})
    if spec.base is not None:
        base = Path(spec.base).expanduser()
        if not base.is_file():
            raise ConfigError(f"{source}: base: no such config file {base} (paths are relative to {Path.cwd()})")
        raw, _ = read_yaml_mapping(base, "config", "a config must be a mapping of sections")
    try:
        return apply_overrides(raw, spec.set, spec.resources.values())
    except ConfigError as err:
        raise ConfigError(f"{source}: set: {err}") from None


def _check_space(search: SearchSpec) -> None:
    """Every key a leaf of RunConfig; every listed value (and range end) a valid config."""
    source = search.source
    for key in search.spec.space:
        problem = _config_fields(RunConfig, key.split("."))
        if problem is not None:
            raise ConfigError(f"{source}: space.{key}: not a run config key: {problem}")
    first = {k: d.probes()[0] for k, d in search.spec.space.items()}
    try:
        search.trial_config(first)
    except ConfigError as err:
        raise ConfigError(
            f"{source}: the base config with the first value of every space key is invalid: {err}"
        ) from None
    for key, dom in search.spec.space.items():
        for value in dom.probes()[1:]:
            try:
                search.trial_config({**first, key: value})
            except ConfigError as err:
                raise ConfigError(f"{source}: space.{key}: value {value!r} gives an invalid config: {err}") from None


def search_from_dict(raw: dict[str, Any], source: str = "<tune>", default_name: str = "tune", lines=None):
    """Validate a TUNE mapping → :class:`SearchSpec`.

    Raises:
        ConfigError: unknown or invalid keys (with the file's line when known), space keys that are not run config
            fields, or values that make an invalid run config.
    """
    from protpeft.config import _format_validation_error

    try:
        spec = TuneSpec.model_validate(raw)
    except ValidationError as err:
        message = _format_validation_error(err, source, lines or {})
        raise ConfigError(message.replace("invalid configuration", "invalid TUNE file", 1)) from None
    search = SearchSpec(spec, _base_raw(spec, source), source, spec.name or default_name)
    _check_space(search)
    if spec.asha.enabled:
        search.asha_max_t()
    return search


def load_search(path: str | Path) -> SearchSpec:
    """Read and validate a TUNE.yaml (see the module docstring for its format)."""
    path = Path(path)
    raw, lines = _read_yaml(path)
    return search_from_dict(raw, str(path), path.stem, lines)


def restore_search(data: dict[str, Any]) -> SearchSpec:
    """The :class:`SearchSpec` an experiment saved (``SearchSpec.to_dict``); no files are read again."""
    spec = TuneSpec.model_validate(data["spec"])
    return SearchSpec(spec, data["base"], data["source"], data["name"])
