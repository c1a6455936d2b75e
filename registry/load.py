"""``load("ppi-lora@champion") -> Predictor``: pull a registered version and put it on its base model.

The base model is found as for a run directory (:func:`protpeft.base_location.resolve_base`): the ``base=``
argument, ``$PROTPEFT_BASE_MODEL_DIR`` (a lab's local copies of the hub checkpoints), the recorded location, the
name the run was given (relative to the current directory), the hub id. Full fine-tuning versions carry their whole
backbone and need no base. Whatever is used must have the fingerprint the artefact was trained on.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from protpeft.base_location import BASE_DIR_ENV, resolve_base

from .packaging import verify_run_dir
from .refs import ModelRef

if TYPE_CHECKING:
    from protpeft.predict import Predictor

__all__ = ["BASE_DIR_ENV", "load", "load_run_dir", "resolve_base"]


def load_run_dir(run_dir: str | Path, base: str | None = None, device: str = "cpu") -> Predictor:
    """A Predictor from a downloaded artefact, after checking it against its manifest (safetensors/JSON only)."""
    from protpeft.predict import Predictor

    verify_run_dir(run_dir)
    return Predictor.from_run_dir(run_dir, base=base, device=device)


def load(
    ref: str | ModelRef, base: str | None = None, device: str = "cpu", tracking_uri: str | None = None
) -> Predictor:
    """Pull a registered version (``name``, ``name@alias``, ``name/version``) and return its :class:`Predictor`.

    Raises:
        RegistryError: unknown model, alias or version (the message lists what exists).
        ArtifactError: a corrupted or mismatched artefact (pickle or unknown file, missing or altered file, base
            model with another fingerprint); ``BaseModelNotFound``: no base model found (says how to pass one).
    """
    from .models import pull

    with tempfile.TemporaryDirectory(prefix="protpeft-pull-") as tmp:
        run_dir = pull(ref, Path(tmp) / "run", tracking_uri=tracking_uri, verify=False)  # verified once, below
        return load_run_dir(run_dir, base=base, device=device)
