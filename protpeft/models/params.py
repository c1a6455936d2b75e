"""Parameter counts of a configured model without loading weights (meta device): works for 650M and 3B."""

from __future__ import annotations

from typing import Any

import torch

from protpeft.config import RunConfig
from protpeft.models.backbone import build_backbone_on_meta
from protpeft.models.classifier import ClassificationHead
from protpeft.models.modes import apply_mode, count_parameters, lora_layers
from protpeft.modes import MODES
from protpeft.tasks import TASKS

__all__ = ["parameter_report"]


def parameter_report(cfg: RunConfig) -> dict[str, Any]:
    """``total`` (backbone + adapters + head) and ``trainable`` for ``cfg``'s mode, plus the parts."""
    backbone = apply_mode(build_backbone_on_meta(cfg.model.base), cfg.mode, cfg.lora)
    with torch.device("meta"):
        head = ClassificationHead(
            backbone.config.hidden_size, cfg.model.head_hidden, TASKS[cfg.task].outputs, cfg.model.head_dropout
        )
    backbone_counts = count_parameters(backbone)
    head_params = count_parameters(head)["total"]
    report: dict[str, Any] = {
        "base": cfg.model.base,
        "task": cfg.task,
        "mode": cfg.mode,
        "total": backbone_counts["total"] + head_params,
        "trainable": backbone_counts["trainable"] + head_params,
        "head": head_params,
        "backbone_trainable": backbone_counts["trainable"],
        "layers": backbone.config.num_hidden_layers,
        "hidden_size": backbone.config.hidden_size,
    }
    if MODES[cfg.mode].adapter:
        report["lora_layers"] = lora_layers(cfg.lora, backbone.config.num_hidden_layers)
    report["trainable_fraction"] = report["trainable"] / report["total"]
    return report
