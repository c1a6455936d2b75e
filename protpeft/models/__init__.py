"""ESM-2 backbones, task models and training modes."""

from protpeft.models.backbone import (
    ESM2_PRESETS,
    backbone_fingerprint,
    build_backbone_on_meta,
    init_tiny,
    load_backbone,
    load_tokenizer,
)
from protpeft.models.classifier import ClassificationHead, EmbeddingTable, ProteinClassifier, ProteinEncoder
from protpeft.models.modes import apply_mode, count_parameters
from protpeft.modes import MODES

__all__ = [
    "ESM2_PRESETS",
    "MODES",
    "ClassificationHead",
    "EmbeddingTable",
    "ProteinClassifier",
    "ProteinEncoder",
    "apply_mode",
    "backbone_fingerprint",
    "build_backbone_on_meta",
    "count_parameters",
    "init_tiny",
    "load_backbone",
    "load_tokenizer",
]
