"""The only place that decides what is trainable: full, lora (peft adapters + head) or frozen (head only).

Each mode's function here is its :data:`~protpeft.modes.MODES` row's ``apply``. The training loop builds its
optimizer from ``requires_grad`` parameters and never branches on the mode.
"""

from __future__ import annotations

from torch import nn

from protpeft.config import LoraConfig
from protpeft.modes import MODES

__all__ = [
    "apply_mode",
    "count_parameters",
    "freeze",
    "inject_lora",
    "lora_layers",
    "peft_lora_config",
    "train_everything",
]


def lora_layers(cfg: LoraConfig, num_layers: int) -> list[int]:
    """The 0-based encoder layers that get adapters: ``cfg.layers`` if given, else the last ``cfg.last_layers``."""
    if cfg.layers is not None:
        bad = [i for i in cfg.layers if not 0 <= i < num_layers]
        if bad:
            from protpeft.errors import ConfigError

            raise ConfigError(f"lora.layers: {bad} out of range for a backbone with {num_layers} layers")
        return sorted(set(cfg.layers))
    if cfg.last_layers is None:
        return list(range(num_layers))
    return list(range(max(0, num_layers - cfg.last_layers), num_layers))


def peft_lora_config(cfg: LoraConfig, num_layers: int):
    """Our ``lora`` block mapped field by field onto peft's ``LoraConfig``."""
    import peft

    return peft.LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        layers_to_transform=lora_layers(cfg, num_layers),
        bias="none",
    )


def apply_mode(backbone: nn.Module, mode: str, lora: LoraConfig) -> nn.Module:
    """Return the backbone prepared for ``mode`` (its :data:`~protpeft.modes.MODES` row's ``apply``). The head is
    always trainable and lives outside the backbone."""
    spec = MODES.get(mode)
    if spec is None:
        raise ValueError(f"unknown mode {mode!r}; expected one of {tuple(MODES)}")
    return spec.apply(backbone, lora)


def train_everything(backbone: nn.Module, lora: LoraConfig) -> nn.Module:
    """full: every backbone parameter trainable."""
    return backbone.requires_grad_(True)


def inject_lora(backbone: nn.Module, lora: LoraConfig) -> nn.Module:
    """lora: peft-wrapped with only the adapters trainable."""
    import peft

    from protpeft.models.backbone import quiet_hf

    with quiet_hf():
        wrapped = peft.get_peft_model(backbone, peft_lora_config(lora, backbone.config.num_hidden_layers))
    for name, param in wrapped.named_parameters():  # peft freezes the base; keep it that way, adapters only
        param.requires_grad_("lora_" in name)
    return wrapped


def freeze(backbone: nn.Module, lora: LoraConfig) -> nn.Module:
    """frozen: nothing trainable, in eval mode (it only embeds sequences once, for the cache)."""
    backbone.requires_grad_(False)
    return backbone.eval()


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{"total": …, "trainable": …}`` counting each parameter once (works on the meta device)."""
    seen: set[int] = set()
    total = trainable = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return {"total": total, "trainable": trainable}
