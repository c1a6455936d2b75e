"""AdamW over the trainable parameters only, with decay groups, and the warm-up + decay schedule."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from protpeft.config import OptimConfig

__all__ = ["build_optimizer", "build_scheduler", "lr_multiplier", "param_groups"]


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Three groups: LoRA matrices (``lora_weight_decay``), other matrices (``weight_decay``), and biases and norms
    (no decay). Frozen parameters are left out, so the optimizer holds state for trainable ones only."""
    lora_decay = cfg.weight_decay if cfg.lora_weight_decay is None else cfg.lora_weight_decay
    groups: dict[str, list[nn.Parameter]] = {"lora": [], "decay": [], "no_decay": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if "lora_" in name:
            groups["lora"].append(param)
        elif param.ndim < 2:
            groups["no_decay"].append(param)
        else:
            groups["decay"].append(param)
    decay = {"lora": lora_decay, "decay": cfg.weight_decay, "no_decay": 0.0}
    return [{"params": ps, "weight_decay": decay[k], "name": k} for k, ps in groups.items() if ps]


def build_optimizer(model: nn.Module, cfg: OptimConfig, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups`. ``fused``: one CUDA kernel per group and step (PyTorch's fused AdamW)
    instead of a dozen ``foreach`` launches; only for parameters that all live on a GPU."""
    groups = param_groups(model, cfg)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None)


def lr_multiplier(cfg: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """Linear warm-up to 1, then cosine / linear decay to 0 at ``total_steps`` (or constant)."""
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total_steps)

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if cfg.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg, total_steps))
