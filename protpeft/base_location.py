"""Where a run's base model is on this machine: the one place that decides it (run directories, registered
versions, serving). No torch here: the registry imports it at start-up.

A run records two names for its base (:class:`~protpeft.artifact.RunArtifact`): ``base_model``, where training
loaded it from (made absolute when training went through Ray, possibly inside a Ray job's temporary copy of its
working directory), and ``base_named``, what the user named (a hub id, or a path relative to the directory the run
was launched from, e.g. the ``protpeft submit`` working directory).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from protpeft.artifact import ArtifactError, RunArtifact

__all__ = ["BASE_DIR_ENV", "BaseModelNotFound", "resolve_base"]

BASE_DIR_ENV = "PROTPEFT_BASE_MODEL_DIR"
"""A directory of local copies of base models: ``<dir>/<name>`` or ``<dir>/<last part of name>``."""
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


class BaseModelNotFound(ArtifactError):
    """The base model a run recorded is not on this machine, and no ``--base`` was given."""


def resolve_base(
    artifact: RunArtifact, base: str | None = None, *, workdir: str | Path | None = None, source: str | Path = ""
) -> str | None:
    """Where to load the artefact's base model from (None for a mode that carries its own backbone: full).

    In order: ``base`` (the user's ``--base``); ``$PROTPEFT_BASE_MODEL_DIR/<name>`` or ``.../<last part of name>``
    for the recorded names (:attr:`~RunArtifact.base_named`, then :attr:`~RunArtifact.base_model`); the recorded
    location when it exists; the named path relative to ``workdir`` (default: the current directory, i.e. where
    the run was launched from); the name as a hub id, unless it was a local path when the run trained. Whatever is
    chosen is fingerprint-checked when loaded.

    Raises:
        BaseModelNotFound: nothing found; the one-line message says how to pass ``--base``.
    """
    if artifact.mode_spec.own_backbone:
        return None
    if base:
        return str(base)
    recorded = artifact.base_model
    named = artifact.base_named or recorded
    here = Path(workdir) if workdir is not None else Path.cwd()
    root = os.environ.get(BASE_DIR_ENV)
    candidates = [Path(root) / n.lstrip("/") for n in (named, recorded)] if root else []
    candidates += [Path(root) / Path(n).name for n in (named, recorded)] if root else []
    candidates += [here / Path(n).expanduser() for n in (recorded, named)]  # an absolute path stays itself
    found = next((c for c in candidates if c.is_dir()), None)
    if found is not None:
        return str(found)
    # named != recorded: launching resolved it, so it was a local path then (a hub id is left as it is)
    was_local = named != recorded or named.startswith(("/", ".", "~"))
    if not was_local and _HUB_ID.fullmatch(named):
        return named
    gone = f" (it trained from {recorded!r}, which is gone)" if recorded != named else ""
    relative = "" if Path(named).is_absolute() else "run from the directory it was named relative to, "
    in_root = f" (${BASE_DIR_ENV}={root} holds none)" if root else ""
    where = f"{source}: " if source else ""
    raise BaseModelNotFound(
        f"{where}base model {named!r} not found{gone}; {relative}pass --base <directory or hub id> with the "
        f"same weights (fingerprint {artifact.base_fingerprint}), or set ${BASE_DIR_ENV} to a directory holding "
        f"{Path(named).name!r}{in_root}"
    )
