"""The run directory: the contract between trainer, registry and deploy. Safetensors and JSON only.

```
RUN/
  protpeft.json               task, mode, base model, base fingerprint, labels, pooling, crop, metrics, config...
  head.safetensors            classification head
  adapter_config.json         lora: peft's own format (PeftModel.from_pretrained loads it)
  adapter_model.safetensors
  backbone/                   full: save_pretrained of the fine-tuned backbone + tokenizer
```
Reading refuses any file that could execute code when loaded (pickles, ``.bin``, ``.pt``...).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from protpeft.errors import ProtpeftError

__all__ = [
    "ARTIFACT_FILE",
    "ArtifactError",
    "SAFE_SUFFIXES",
    "check_artifact_files",
    "read_artifact_meta",
    "read_head",
    "write_artifact",
    "write_json_atomic",
]

ARTIFACT_FILE = "protpeft.json"
HEAD_FILE = "head.safetensors"
CHECKPOINTS_DIR = "checkpoints"
SAFE_SUFFIXES = (".json", ".safetensors", ".txt", ".md", ".jsonl")
REQUIRED = {
    "full": (HEAD_FILE, "backbone/config.json"),
    "lora": (HEAD_FILE, "adapter_config.json", "adapter_model.safetensors"),
    "frozen": (HEAD_FILE,),
}


class ArtifactError(ProtpeftError):
    """A run directory that is incomplete, corrupted or holds files we refuse to load."""


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file + rename, so a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def write_artifact(
    run_dir: Path,
    meta: dict[str, Any],
    head: nn.Module,
    backbone: nn.Module | None = None,
    tokenizer=None,
) -> Path:
    """Write a run directory. ``backbone`` is the peft model in lora mode (adapter only is saved), the fine-tuned
    backbone in full mode (saved whole), and None in frozen mode."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in head.state_dict().items()},
        run_dir / HEAD_FILE,
    )
    mode = meta["mode"]
    if mode == "lora":
        backbone.save_pretrained(run_dir)  # adapter_config.json + adapter_model.safetensors
    elif mode == "full":
        backbone.save_pretrained(run_dir / "backbone")
        if tokenizer is not None:
            tokenizer.save_pretrained(run_dir / "backbone")
    write_json_atomic(run_dir / ARTIFACT_FILE, meta)  # last: its presence marks a complete artefact
    return run_dir


def check_artifact_files(run_dir: str | Path) -> dict[str, Any]:
    """Validate a run directory before anything in it is loaded; return its metadata.

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
    meta = read_artifact_meta(run_dir)
    missing = [name for name in REQUIRED.get(meta.get("mode"), ()) if not (run_dir / name).is_file()]
    if missing:
        raise ArtifactError(f"{run_dir}: incomplete {meta.get('mode')} artefact, missing {', '.join(missing)}")
    return meta


def read_artifact_meta(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / ARTIFACT_FILE
    if not path.is_file():
        raise ArtifactError(f"{run_dir}: no {ARTIFACT_FILE}; not a protpeft run directory (or the run did not finish)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}:{err.lineno}: corrupted JSON ({err.msg})") from None
    for key in ("task", "mode", "base_model", "base_fingerprint", "label_names", "pooling", "crop"):
        if key not in meta:
            raise ArtifactError(f"{path}: missing key {key!r}")
    return meta


def read_head(run_dir: str | Path) -> dict[str, torch.Tensor]:
    path = Path(run_dir) / HEAD_FILE
    try:
        return load_file(path)
    except Exception as err:  # safetensors raises its own error types for truncated/corrupt files
        raise ArtifactError(f"{path}: cannot read head weights ({err})") from None
