"""``load("ppi-lora@champion") -> Predictor``: pull a registered version and put it on its base model.

The base model is, in order: the ``base=`` argument; ``$PROTPEFT_BASE_MODEL_DIR/<recorded hub id>`` or
``$PROTPEFT_BASE_MODEL_DIR/<last part of the recorded id>`` when that directory exists (a lab's local copies of the
hub checkpoints); the recorded hub id or path itself. Full fine-tuning versions carry their whole backbone and
need no base. Whatever is used must have the fingerprint the artefact was trained on.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .packaging import verify_run_dir
from .refs import ModelRef, RegistryError

if TYPE_CHECKING:
    from protpeft.artifact import RunArtifact
    from protpeft.predict import Predictor

__all__ = ["BASE_DIR_ENV", "load", "load_run_dir", "resolve_base"]

BASE_DIR_ENV = "PROTPEFT_BASE_MODEL_DIR"


def resolve_base(artifact: RunArtifact, base: str | None = None) -> str | None:
    """Where to load the artefact's base model from (None for a mode that carries its own backbone: full)."""
    if artifact.mode_spec.own_backbone:
        return None
    if base:
        return str(base)
    recorded = artifact.base_model
    local_root = os.environ.get(BASE_DIR_ENV)
    if local_root:
        for candidate in (Path(local_root) / recorded.lstrip("/"), Path(local_root) / Path(recorded).name):
            if candidate.is_dir():
                return str(candidate)
    looks_local = recorded.startswith(("/", ".", "~")) or Path(recorded).is_absolute()
    if looks_local and not Path(recorded).expanduser().is_dir():
        where = f"${BASE_DIR_ENV}={local_root} holds no {Path(recorded).name!r} either; " if local_root else ""
        raise RegistryError(
            f"the base model recorded for this artefact, {recorded!r}, does not exist on this machine; {where}pass "
            f"base=<directory or hub id> (--base), or set ${BASE_DIR_ENV} to a directory holding "
            f"{Path(recorded).name!r}"
        )
    return recorded


def load_run_dir(run_dir: str | Path, base: str | None = None, device: str = "cpu") -> Predictor:
    """A Predictor from a downloaded artefact, after checking it against its manifest (safetensors/JSON only)."""
    from protpeft.predict import Predictor

    artifact = verify_run_dir(run_dir)
    return Predictor.from_run_dir(run_dir, base=resolve_base(artifact, base), device=device)


def load(
    ref: str | ModelRef, base: str | None = None, device: str = "cpu", tracking_uri: str | None = None
) -> Predictor:
    """Pull a registered version (``name``, ``name@alias``, ``name/version``) and return its :class:`Predictor`.

    Raises:
        RegistryError: unknown model, alias or version (the message lists what exists), or a missing base model.
        ArtifactError: a corrupted or mismatched artefact (pickle or unknown file, missing or altered file, base
            model with another fingerprint).
    """
    from .models import pull

    with tempfile.TemporaryDirectory(prefix="protpeft-pull-") as tmp:
        run_dir = pull(ref, Path(tmp) / "run", tracking_uri=tracking_uri, verify=False)  # verified once, below
        return load_run_dir(run_dir, base=base, device=device)
