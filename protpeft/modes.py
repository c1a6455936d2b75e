"""The training modes as data: one :class:`ModeSpec` row per mode, which every layer asks instead of comparing
mode names.

A row says what is trainable (its ``apply`` function in :mod:`protpeft.models.modes`, the only code that sets
``requires_grad``), what the trained model reads (token ids, or cached embeddings), which engine ``auto`` picks
under a process group, and what the run directory holds besides the head — which is also what a predictor loads
its backbone from. Light to import (no torch): the registry and the config read it. Adding a mode: see "Adding a
mode" in the README.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from protpeft.lazy import LazyFunction

__all__ = ["MODES", "ModeSpec"]


@dataclass(frozen=True)
class ModeSpec:
    name: str
    apply: Callable[..., Any]
    """``apply(backbone, LoraConfig) -> backbone`` with exactly the mode's parameters trainable."""
    encoder: Literal["tokens", "embeddings"]
    """What the trained model reads: token ids through the backbone, or rows of cached backbone embeddings (the
    backbone is frozen, so each sequence is embedded once)."""
    group_engine: str | None
    """The engine ``engine.strategy=auto`` picks under a process group (None: DDP when distributed)."""
    holds: Literal["adapter", "backbone", "head"]
    """What the run directory holds besides the head: peft adapter files to put on the recorded base, its own
    whole backbone in ``backbone/`` (no base needed), or nothing (the recorded base as it is)."""
    files: tuple[str, ...]
    """Files the run directory must hold besides ``head.safetensors``."""
    prefix_cache: bool = False
    """Frozen layers below the trained ones can be cached (``data.prefix_cache``): only where the backbone is
    partly trained (full trains layer 0; frozen caches whole embeddings instead)."""

    @property
    def own_backbone(self) -> bool:
        """The artefact carries its whole backbone: loaded from ``RUN/backbone``, no base model, no fingerprint."""
        return self.holds == "backbone"

    @property
    def adapter(self) -> bool:
        """The artefact holds a peft adapter for the recorded base."""
        return self.holds == "adapter"

    @property
    def saves_backbone(self) -> bool:
        """Training writes (part of) the backbone: the adapter or the whole fine-tuned backbone."""
        return self.holds != "head"


MODES: dict[str, ModeSpec] = {
    "full": ModeSpec(
        name="full",
        apply=LazyFunction("protpeft.models.modes:train_everything"),
        encoder="tokens",
        group_engine="deepspeed",
        holds="backbone",
        files=("backbone/config.json",),
    ),
    "lora": ModeSpec(
        name="lora",
        apply=LazyFunction("protpeft.models.modes:inject_lora"),
        encoder="tokens",
        group_engine=None,
        holds="adapter",
        files=("adapter_config.json", "adapter_model.safetensors"),
        prefix_cache=True,
    ),
    "frozen": ModeSpec(
        name="frozen",
        apply=LazyFunction("protpeft.models.modes:freeze"),
        encoder="embeddings",
        group_engine=None,
        holds="head",
        files=(),
    ),
}
