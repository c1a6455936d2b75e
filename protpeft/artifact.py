"""The run directory: the contract between trainer, registry and deploy. Safetensors and JSON only.

```
RUN/
  protpeft.json               task, mode, base model, base fingerprint, labels, pooling, crop, metrics, config...
  head.safetensors            classification head
  adapter_config.json         lora: peft's own format (PeftModel.from_pretrained loads it)
  adapter_model.safetensors
  backbone/                   full: save_pretrained of the fine-tuned backbone + tokenizer
```
``protpeft.json`` is a :class:`RunArtifact`: written by :func:`write_artifact` and read by :func:`read_artifact`
(nothing else parses it). Reading refuses any file that could execute code when loaded (pickles, ``.bin``,
``.pt``...).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from protpeft.config import Mode, Task
from protpeft.errors import ProtpeftError
from protpeft.modes import MODES, ModeSpec
from protpeft.tasks import TASKS, TaskSpec

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "ARTIFACT_FILE",
    "ArtifactError",
    "HEAD_FILE",
    "RunArtifact",
    "SAFE_SUFFIXES",
    "SCHEMA_VERSION",
    "check_artifact_files",
    "read_artifact",
    "read_head",
    "write_artifact",
    "write_json_atomic",
]

ARTIFACT_FILE = "protpeft.json"
HEAD_FILE = "head.safetensors"
CHECKPOINTS_DIR = "checkpoints"
SAFE_SUFFIXES = (".json", ".safetensors", ".txt", ".md", ".jsonl")
SCHEMA_VERSION = 2
"""2 records ``schema_version`` and ``head_hidden``. A file without ``schema_version`` is version 1; its head width
is the one its recorded config asked for. ``base_named`` is optional within version 2 (older readers ignore it)."""


class ArtifactError(ProtpeftError):
    """A run directory that is incomplete, corrupted or holds files we refuse to load."""


class RunArtifact(BaseModel):
    """What a run directory is (``protpeft.json``): enough to rebuild and describe its model with nothing else."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: int = SCHEMA_VERSION
    task: Task
    mode: Mode
    base_model: str
    """Where the run loaded its base model from: a hub id, or a directory (made absolute when training went
    through Ray: possibly a Ray job's temporary copy, gone after the job)."""
    base_named: str | None = None
    """The base model as the user named it: a hub id, or a path relative to the directory the run was launched
    from (the ``protpeft submit`` working directory for a job); None in files written before it was recorded.
    Loading looks for it when ``base_model`` is gone (:func:`~protpeft.base_location.resolve_base`)."""
    base_fingerprint: str
    """:func:`~protpeft.models.backbone.backbone_fingerprint` of the base before training."""
    label_names: tuple[str, ...]
    pooling: Literal["mean", "cls"]
    crop: int
    head_hidden: int
    """Width of the classification head's hidden layer."""
    metrics: dict[str, Any] = Field(default_factory=dict)
    """Final val_* and test_* metrics."""
    params: dict[str, int] = Field(default_factory=dict)
    """``total`` and ``trainable`` parameter counts."""
    config: dict[str, Any] = Field(default_factory=dict)
    """The resolved :class:`~protpeft.config.RunConfig`, as JSON."""
    protpeft_version: str | None = None
    dataset_fingerprint: str | None = None
    data_notes: list[str] = Field(default_factory=list)
    split_counts: dict[str, int] = Field(default_factory=dict)
    steps: int = 0
    seconds: float | None = None
    peak_memory_mb: float | None = None
    strategy: str | None = None
    workers: int | None = None
    embedded_sequences: int = 0
    prefix_forwards: int = 0
    """Sequences computed through encoder layer 0, all workers (LoRA: the frozen prefix; every training and
    evaluation row without the prefix cache, once per sequence filled with it)."""
    created: str | None = None
    """ISO 8601, UTC."""
    mlflow_run_id: str | None = None
    """The MLflow run that tracked the training, when there was one."""

    @property
    def task_spec(self) -> TaskSpec:
        return TASKS[self.task]

    @property
    def mode_spec(self) -> ModeSpec:
        return MODES[self.mode]

    @property
    def run_name(self) -> str | None:
        return self.config.get("name") or None

    @model_validator(mode="before")
    @classmethod
    def _base_named_from_config(cls, data: Any) -> Any:
        """Written without ``base_named``: the name its config recorded (``model.base_named``), if any."""
        if isinstance(data, dict) and data.get("base_named") is None:
            named = ((data.get("config") or {}).get("model") or {}).get("base_named")
            if named:
                data = {**data, "base_named": named}
        return data

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RunArtifact:
        """Validate a ``protpeft.json`` mapping of any schema version (raises pydantic's ``ValidationError``)."""
        data = dict(raw)
        if "schema_version" not in data:  # version 1: no version, no head width
            data["schema_version"] = 1
            width = ((data.get("config") or {}).get("model") or {}).get("head_hidden")
            if "head_hidden" not in data and width is not None:
                data["head_hidden"] = width
        return cls.model_validate(data)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file + rename, so a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def write_artifact(
    run_dir: Path,
    artifact: RunArtifact,
    head: nn.Module,
    backbone: nn.Module | None = None,
    tokenizer=None,
) -> Path:
    """Write a run directory: the head, what the mode holds besides it (the adapter of the peft-wrapped
    ``backbone``, or the whole fine-tuned ``backbone`` + ``tokenizer`` in ``backbone/``), then ``protpeft.json``."""
    import torch
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in head.state_dict().items()},
        run_dir / HEAD_FILE,
    )
    mode = artifact.mode_spec
    if mode.adapter:
        backbone.save_pretrained(run_dir)  # adapter_config.json + adapter_model.safetensors
    elif mode.own_backbone:
        backbone.save_pretrained(run_dir / "backbone")
        if tokenizer is not None:
            tokenizer.save_pretrained(run_dir / "backbone")
    write_json_atomic(run_dir / ARTIFACT_FILE, artifact.to_json())  # last: its presence marks a complete artefact
    return run_dir


def check_artifact_files(run_dir: str | Path) -> RunArtifact:
    """Validate a run directory before anything in it is loaded; return its :class:`RunArtifact`.

    Raises:
        ArtifactError: missing ``protpeft.json`` or required files, or a file type that is not safetensors/JSON.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArtifactError(f"{run_dir}: not a directory")
    unsafe = sorted(
        str(rel)
        for rel in (p.relative_to(run_dir) for p in run_dir.rglob("*") if p.is_file())
        if rel.suffix not in SAFE_SUFFIXES and rel.parts[0] != CHECKPOINTS_DIR  # resume state is never loaded here
    )
    if unsafe:
        raise ArtifactError(
            f"{run_dir}: refusing to load an artefact holding {', '.join(unsafe)}: only safetensors and JSON are "
            "accepted (pickle-based files can run code when loaded)"
        )
    artifact = read_artifact(run_dir)
    required = (HEAD_FILE, *artifact.mode_spec.files)
    missing = [name for name in required if not (run_dir / name).is_file()]
    if missing:
        raise ArtifactError(f"{run_dir}: incomplete {artifact.mode} artefact, missing {', '.join(missing)}")
    return artifact


def read_artifact(run_dir: str | Path) -> RunArtifact:
    """The run directory's ``protpeft.json`` (any schema version up to :data:`SCHEMA_VERSION`).

    Raises:
        ArtifactError: no such file, corrupted JSON, missing or invalid keys, or a newer schema version.
    """
    path = Path(run_dir) / ARTIFACT_FILE
    if not path.is_file():
        raise ArtifactError(f"{run_dir}: no {ARTIFACT_FILE}; not a protpeft run directory (or the run did not finish)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}:{err.lineno}: corrupted JSON ({err.msg})") from None
    if not isinstance(raw, dict):
        raise ArtifactError(f"{path}: not a JSON object")
    version = raw.get("schema_version", 1)
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise ArtifactError(
            f"{path}: schema version {version} was written by a newer protpeft (this one reads up to "
            f"{SCHEMA_VERSION}); upgrade protpeft"
        )
    try:
        return RunArtifact.from_json(raw)
    except ValidationError as err:
        raise ArtifactError(f"{path}: {_problems(err)}") from None


def _problems(err: ValidationError) -> str:
    problems = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        problems.append(f"missing key {key!r}" if e["type"] == "missing" else f"{key}: {e['msg']}")
    return "; ".join(problems)


def read_head(run_dir: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(run_dir) / HEAD_FILE
    try:
        return load_file(path)
    except Exception as err:  # safetensors raises its own error types for truncated/corrupt files
        raise ArtifactError(f"{path}: cannot read head weights ({err})") from None
