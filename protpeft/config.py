"""The run configuration: one typed tree, loaded from YAML, overridden with dotted ``--set`` keys, validated once.

Every later stage reads the resolved :class:`RunConfig`, and every run saves it (``protpeft.json``) so a run is
reproducible from its own directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from protpeft.config_syntax import apply_overrides, parse_override, read_yaml_mapping, set_dotted
from protpeft.errors import ConfigError

__all__ = [
    "DataConfig",
    "EngineConfig",
    "LoraConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "SplitConfig",
    "TrackingConfig",
    "WORKER_RESOURCE_KEYS",
    "apply_overrides",
    "flatten_config",
    "load_config",
    "parse_override",
    "set_dotted",
    "with_values",
    "worker_resource_values",
]

Task = Literal["ppi", "symmetry"]
Mode = Literal["full", "lora", "frozen"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class SplitConfig(_Section):
    method: Literal["auto", "column", "random", "by_protein"] = "auto"
    """auto: the file's `split` column when present, else by_protein for PPI and random for symmetry."""
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """train / val / test fractions for a seeded split."""
    seed: int = 0
    """Seed of the split (independent of the training seed)."""

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitConfig:
        if any(f < 0 for f in self.fractions) or abs(sum(self.fractions) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must be non-negative and sum to 1, got {list(self.fractions)}")
        return self


class DataConfig(_Section):
    @field_validator("prefix_cache", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML 1.1 reads a bare `off` as false

    pairs: Path | None = None
    """PPI pairs: D-SCRIPT layout (headerless `id1 id2 label`) or gold-standard layout (header `p0 p1 label split`)."""
    sequences: Path | None = None
    """FASTA file with every sequence the pairs name (PPI)."""
    table: Path | None = None
    """Symmetry table (TSV/CSV) with columns `sequence`, `label` (space-separated codes) and optionally `split`."""
    layout: Literal["auto", "dscript", "gold"] = "auto"
    """Layout of the pairs file; auto looks for the gold-standard header."""
    split: SplitConfig = Field(default_factory=SplitConfig)
    crop: int = Field(1024, ge=8)
    """Maximum tokens per sequence including <cls> and <eos>; longer sequences are cropped."""
    bucket_by_length: bool = True
    """Sort by length inside shuffled mega-batches so batches hold sequences of similar length (less padding)."""
    bucket_megabatch: int = Field(50, ge=1)
    """Mega-batch size in batches: larger means tighter length buckets but less randomness."""
    max_examples: int | None = Field(None, ge=1)
    """Use at most this many training examples (seeded subsample); for quick runs."""
    cache_dir: Path | None = None
    """Frozen-mode embedding cache and LoRA prefix cache; default ~/.cache/protpeft/embeddings (or $PROTPEFT_CACHE)."""
    prefix_cache: Literal["auto", "off"] = "auto"
    """LoRA: compute the frozen layers below the lowest adapted one once per sequence and train on their cached
    output (exact; auto uses it whenever those layers are frozen and dropout-free, and says why not otherwise)."""
    prefix_cache_max_gb: float = Field(20.0, ge=0)
    """Disk budget of one prefix cache; sequences beyond it have their prefix computed on the fly."""
    num_workers: int = Field(0, ge=0)
    """DataLoader worker processes."""


class ModelConfig(_Section):
    base: str = "facebook/esm2_t33_650M_UR50D"
    """Backbone: a Hugging Face hub id or a local directory written by save_pretrained / `protpeft model init-tiny`."""
    base_named: str | None = None
    """Set on loading, leave it out: `base` as the user named it (a relative path stays relative to the directory
    the run was launched from). Launching may resolve `base` to an absolute path that exists only for the run (a Ray
    job's copy of its working directory); the run's artefact records this name, so the base is found again."""
    pooling: Literal["mean", "cls"] = "mean"
    """How a sequence's token states become one vector: mean over residues, or the <cls> state."""
    head_hidden: int = Field(128, ge=1)
    """Width of the classification head's hidden layer."""
    head_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    """Dropout before each linear layer of the head."""

    @model_validator(mode="before")
    @classmethod
    def _record_base_name(cls, data: Any) -> Any:
        """``base_named`` = ``base`` as validated. The one pair kept apart is an absolute ``base`` with a relative
        name (a launch resolved the path; copies made with ``model_copy`` and their dumps keep the name): any other
        ``base`` is what the user named, even in a config dumped from an earlier run."""
        if isinstance(data, dict):
            base = str(data.get("base", cls.model_fields["base"].default))
            named = data.get("base_named")
            if named is None or not (Path(base).is_absolute() and not Path(str(named)).expanduser().is_absolute()):
                data = {**data, "base_named": base}
        return data


class LoraConfig(_Section):
    r: int = Field(8, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["key", "value"])
    """Names of the attention projections that get adapters (ESM: query, key, value, dense)."""
    last_layers: int | None = Field(8, ge=1)
    """Adapt only the last N encoder layers (the paper: 8). Ignored when `layers` is given."""
    layers: list[int] | None = None
    """Explicit 0-based encoder layer indices to adapt; overrides `last_layers`."""


class OptimConfig(_Section):
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    lora_weight_decay: float | None = Field(None, ge=0)
    """Weight decay on LoRA matrices; None uses `weight_decay`."""
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up in optimizer steps (before the decay)."""
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    """Warm-up as a fraction of all optimizer steps; used when warmup_steps is 0."""
    grad_clip: float | None = Field(0.2, gt=0)
    """Clip the global gradient norm to this value; None disables clipping."""
    batch_size: int = Field(4, ge=1)
    """Examples per worker per micro-batch."""
    grad_accum: int = Field(16, ge=1)
    """Micro-batches per optimizer step. Global batch = batch_size x workers x grad_accum."""
    eval_batch_size: int | None = Field(None, ge=1)
    """Batch size for evaluation and embedding; default 4 x batch_size."""
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps (overrides epochs when it comes first)."""
    seed: int = 0


class EngineConfig(_Section):
    strategy: Literal["auto", "local", "ddp", "deepspeed"] = "auto"
    """auto: plain PyTorch with one worker; with several, DeepSpeed for full mode and DDP for LoRA/frozen."""
    workers: int = Field(1, ge=1)
    cpus_per_worker: float | Literal["auto"] = "auto"
    """Ray CPUs per worker (Ray sets the worker's threads to it). auto: a node's CPUs shared among the workers that
    run on it at once (this run's; all jobs' for run-many; max_concurrent trials' for tune), at least 1."""
    gpus_per_worker: float = Field(0, ge=0)
    """Fractions pack several jobs on one GPU (0.25 = four jobs per GPU)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 on GPUs that support it, fp32 on CPU."""
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    """DeepSpeed ZeRO CPU offload of optimizer states."""
    deepspeed_config: Path | dict[str, Any] | None = None
    """A DeepSpeed JSON file, or its content as a mapping, to use instead of the generated config (batch sizes and
    clipping are still set from optim). A file is read and checked where the run is launched and travels to the
    workers as its content: it need not exist on their nodes."""
    eval_every: int | None = Field(None, ge=1)
    """Evaluate every N optimizer steps; None = at the end of each epoch."""
    checkpoint_every: int | None = Field(None, ge=1)
    """Checkpoint every N optimizer steps; None = at each evaluation."""
    keep_checkpoints: int = Field(2, ge=1)
    checkpoint_metric: str = "val_aupr"
    checkpoint_mode: Literal["max", "min"] = "max"
    max_failures: int = Field(0, ge=-1)
    """Worker-group restarts from the last checkpoint before the run fails (-1: unlimited)."""
    log_every: int = Field(10, ge=1)
    """Log training loss every N optimizer steps."""
    storage: str | None = None
    """Where Ray keeps checkpoints and the finished artefact: a directory (shared by every node on a multi-node
    cluster) or an object store, ``s3://BUCKET/PREFIX`` (endpoint and keys from ``AWS_ENDPOINT_URL``,
    ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``). Default: ``<output_dir>/ray_results``."""

    @field_validator("deepspeed_config")
    @classmethod
    def _deepspeed(cls, value: Path | dict[str, Any] | None) -> Path | dict[str, Any] | None:
        problem = deepspeed_problem(value) if isinstance(value, dict) else None
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("cpus_per_worker", mode="before")
    @classmethod
    def _cpus(cls, value: Any) -> float | str:
        if value == "auto":
            return value
        try:
            cpus = 0.0 if isinstance(value, bool) else float(value)
        except (TypeError, ValueError):
            cpus = 0.0
        if not cpus > 0:
            raise ValueError(f"must be a number of CPUs > 0 or auto, not {value!r}")
        return cpus


class TrackingConfig(_Section):
    mlflow: bool = True
    """Log the run to MLflow (tracking URI from $MLFLOW_TRACKING_URI, else the embedded SQLite store)."""
    experiment: str = "protpeft"
    register_as: str | None = None
    """Register the finished run's artefact under this model name."""
    alias: str | None = None
    """Alias to point at the new version, e.g. champion."""


class RunConfig(_Section):
    name: str = "run"
    """Run name; the run directory is <output_dir>/<name>."""
    output_dir: Path = Path("runs")
    task: Task = "ppi"
    mode: Mode = "lora"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _inputs_match_task(self) -> RunConfig:
        from protpeft.tasks import TASKS  # the task table names data-layer code: config stays first in the flow

        spec = TASKS[self.task]
        others = [s.data_fields[0] for s in TASKS.values() if s is not spec]  # the key that identifies each task
        given = [f"data.{key}" for key in others if getattr(self.data, key) is not None]
        if getattr(self.data, spec.data_fields[0]) is None and given:
            wanted = " + ".join(f"data.{key}" for key in spec.data_fields)
            raise ValueError(f"task {self.task} reads {wanted}, but only {', '.join(given)} is set")
        return self

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the resolved config (paths as strings)."""
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------------------------------------------
# YAML + overrides


def deepspeed_problem(ds: Any) -> str | None:
    """What is wrong with a DeepSpeed config's content for protpeft, or None."""
    if not isinstance(ds, dict):
        return "a DeepSpeed config must be a JSON object"
    if "scheduler" in ds:
        return "remove the 'scheduler' section of the DeepSpeed config; the schedule comes from the optim section"
    return None


def read_deepspeed_json(path: str | Path) -> dict[str, Any]:
    """The user's DeepSpeed JSON file, read and checked.

    Raises:
        ConfigError: unreadable; not JSON (``file:line:column``); not an object, or with a ``scheduler`` section.
    """
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the DeepSpeed config ({err.strerror or err})") from None
    try:
        ds = json.loads(text)
    except json.JSONDecodeError as err:
        where = f"{path}:{err.lineno}:{err.colno}"
        raise ConfigError(f"{where}: invalid JSON in the DeepSpeed config: {err.msg}") from None
    problem = deepspeed_problem(ds)
    if problem:
        raise ConfigError(f"{path}: {problem}")
    return ds


WORKER_RESOURCE_KEYS = {"CPU": "engine.cpus_per_worker", "GPU": "engine.gpus_per_worker"}
"""Per-worker Ray resources (as run-many and Tune files name them) → the engine keys they set."""


def worker_resource_values(resources: dict[str, float]) -> dict[str, float]:
    """``{"CPU": 1, "GPU": 0.25}`` → ``{"engine.cpus_per_worker": 1, "engine.gpus_per_worker": 0.25}``.

    Raises:
        ConfigError: a resource other than CPU and GPU.
    """
    unknown = sorted(set(resources) - set(WORKER_RESOURCE_KEYS))
    if unknown:
        raise ConfigError(f"unsupported resources {unknown}; use CPU and GPU (per worker)")
    return {WORKER_RESOURCE_KEYS[k]: v for k, v in resources.items()}


def _format_validation_error(err: ValidationError, source: str, lines: dict[tuple[str, ...], int]) -> str:
    problems = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        line = None
        for n in range(len(loc), 0, -1):  # the deepest key we know a line for
            if loc[:n] in lines:
                line = lines[loc[:n]]
                break
        where = f"{source}:{line}" if line else source
        key = ".".join(loc) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {key}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(problems)


def config_from_dict(raw: dict[str, Any], source: str = "<config>", lines: dict | None = None) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source, lines or {})) from None


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, values: dict[str, Any] | None = None
) -> RunConfig:
    """Load a YAML config (or the defaults when ``path`` is None), apply ``--set`` overrides, then typed dotted
    ``values`` (Python values, not strings: what run-many and the CLI's own options set), validate once.

    Relative data/model/output paths in the YAML are kept as written: they resolve against the working directory,
    as a user running ``protpeft train configs/x.yaml`` from the project root expects.

    Raises:
        ConfigError: unreadable YAML or invalid values; the message names the file, line and key.
    """
    raw: dict[str, Any] = {}
    lines: dict[tuple[str, ...], int] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        raw, lines = read_yaml_mapping(path, "config", "a config must be a mapping of sections")
    return config_from_dict(apply_overrides(raw, overrides, values), source, lines)


def with_values(cfg: RunConfig, values: dict[str, Any], source: str = "<config>") -> RunConfig:
    """``cfg`` with the dotted ``values`` set (``{"optim.lr": 3e-4, "name": "trial-1"}``), validated.

    Raises:
        ConfigError: a value makes the config invalid.
    """
    return config_from_dict(apply_overrides(cfg.to_dict(), None, values), source)


def flatten_config(cfg: RunConfig | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'optim': {'lr': 1e-3}}`` → ``{'optim.lr': 1e-3}`` (lists kept as values); for MLflow params and tables."""
    data = cfg.to_dict() if isinstance(cfg, RunConfig) else cfg
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, name + "."))
        else:
            flat[name] = value
    return flat
