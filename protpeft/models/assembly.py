"""One way to build a task model: for training (a fresh head on a prepared backbone) and from a run directory
(its recorded head on the backbone its mode names), with the one place that finds a run's base model
(:func:`~protpeft.base_location.resolve_base`) and the one base-fingerprint check.

Serving puts adapters on a shared base itself and hands that backbone in; everything after is the same.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from protpeft.artifact import ArtifactError, RunArtifact, read_head
from protpeft.base_location import BaseModelNotFound, resolve_base
from protpeft.data.tokens import TokenEncoder
from protpeft.errors import ProtpeftError
from protpeft.models.backbone import backbone_fingerprint, load_backbone, load_tokenizer, quiet_hf
from protpeft.models.classifier import ClassificationHead, ProteinClassifier, ProteinEncoder
from protpeft.tasks import TASKS

__all__ = ["assemble_task_model", "build_task_model", "check_base_fingerprint", "load_checked_base"]


def build_task_model(
    backbone: nn.Module,
    task: str,
    pooling: str,
    head_hidden: int,
    head_dropout: float,
    special_ids: tuple[int, ...],
) -> ProteinClassifier:
    """Backbone + pooling → (average over the task's members) → a new classification head."""
    spec = TASKS[task]
    encoder = ProteinEncoder(backbone, pooling, special_ids)
    head = ClassificationHead(encoder.hidden_size, head_hidden, spec.outputs, head_dropout)
    return ProteinClassifier(encoder, head, spec.members)


def check_base_fingerprint(backbone: nn.Module, artifact: RunArtifact, location: str, source: str | Path) -> None:
    """Refuse a base model whose weights are not the ones the artefact was trained on.

    Raises:
        ArtifactError: naming the run directory, the base given and both fingerprints.
    """
    found = backbone_fingerprint(backbone)
    if found != artifact.base_fingerprint:
        raise ArtifactError(
            f"{source}: base model {location!r} has fingerprint {found}, but this {artifact.mode} artefact was "
            f"trained on {artifact.base_model!r} with fingerprint {artifact.base_fingerprint}; "
            "refusing to combine them"
        )


def load_checked_base(
    artifact: RunArtifact, location: str, source: str | Path, *, given: bool = False, check: bool = True
) -> nn.Module:
    """The base backbone at ``location``, checked against the artefact's recorded fingerprint (unless ``check`` is
    False). A recorded location (not ``given`` by the user) that cannot be loaded says how to pass ``--base``."""
    try:
        backbone = load_backbone(location)
    except ProtpeftError as err:
        if given:
            raise
        problem = " ".join(str(err).split())  # one line: hub errors span several
        raise BaseModelNotFound(
            f"{source}: {problem} Pass --base <directory or hub id> with this run's base weights (fingerprint "
            f"{artifact.base_fingerprint})."
        ) from None
    if check:
        check_base_fingerprint(backbone, artifact, location, source)
    return backbone


def _run_backbone(artifact: RunArtifact, run_dir: Path, base: str | None, check_fingerprint: bool):
    """(backbone, tokenizer) the run's model computes with: its own (``backbone/``), or the base — checked — with
    the run's adapter on it when the mode holds one."""
    mode = artifact.mode_spec
    if mode.own_backbone:
        location = str(run_dir / "backbone")
        return load_backbone(location), load_tokenizer(location)
    location = resolve_base(artifact, base, source=run_dir)
    backbone = load_checked_base(artifact, location, run_dir, given=bool(base), check=check_fingerprint)
    if mode.adapter:
        from peft import PeftModel

        with quiet_hf():
            backbone = PeftModel.from_pretrained(backbone, run_dir)
    return backbone, load_tokenizer(location)


def assemble_task_model(
    artifact: RunArtifact,
    run_dir: str | Path,
    base: str | None = None,
    *,
    backbone: nn.Module | None = None,
    tokenizer=None,
    check_fingerprint: bool = True,
) -> tuple[ProteinClassifier, TokenEncoder]:
    """The task model of a (checked) run directory and its tokens, in eval mode.

    Args:
        base: where to load the base model from instead of the recorded one (its fingerprint must match);
            ignored when the mode carries its own backbone. Without it,
            :func:`~protpeft.base_location.resolve_base` finds the base.
        backbone, tokenizer: a backbone already prepared for this run (serving's shared base with the run's
            adapter active) and its tokenizer; nothing is loaded then.
    """
    run_dir = Path(run_dir)
    if backbone is None:
        backbone, tokenizer = _run_backbone(artifact, run_dir, base, check_fingerprint)
    tokens = TokenEncoder(tokenizer, crop=artifact.crop)
    model = build_task_model(backbone, artifact.task, artifact.pooling, artifact.head_hidden, 0.0, tokens.special_ids)
    model.head.load_state_dict(read_head(run_dir))
    return model.eval(), tokens
