"""Rows of a forward pass on a shared base, each through its own LoRA adapter, on any number of threads at once.

peft switches adapters on the module (``set_adapter``): one adapter for the whole base at a time, so requests for
different adapters would have to run one after another. peft's mixed-adapter batches lift that: a LoRA layer called
with ``adapter_names=[...]`` (one name per row, ``"__base__"`` for none) applies each row's own adapter
(``LoraLayer._mixed_batch_forward``). ``PeftModel.forward(adapter_names=...)`` hands the names to the layers by
registering forward pre-hooks for the duration of the call; those hooks are module-global, so two threads doing it
at once would each apply the other's names. Here every LoRA layer gets one permanent pre-hook that reads the names of
the *calling thread* instead: forward passes for different adapters run concurrently on the forward threads, and one
pass may mix adapters row by row. Nothing else of peft's state (active adapter, disabled adapters) is touched.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import nn

__all__ = ["BASE", "route_rows", "routing_installed", "install_routing"]

BASE = "__base__"
"""peft's name, in ``adapter_names``, for a row that goes through the base model with no adapter."""

_ROUTED = "_protpeft_routed"
_thread = threading.local()


def _inject_names(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    names = getattr(_thread, "names", None)
    if names is not None:
        kwargs["adapter_names"] = names
    return args, kwargs


def install_routing(model: nn.Module) -> int:
    """Give every LoRA layer of ``model`` (a backbone with peft's layers injected) the per-thread routing hook, once;
    returns how many layers got it now. Call after each adapter is loaded: a new adapter may target new modules."""
    from peft.tuners.lora import LoraLayer

    added = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and not getattr(module, _ROUTED, False):
            module.register_forward_pre_hook(_inject_names, with_kwargs=True)
            setattr(module, _ROUTED, True)
            added += 1
    return added


def routing_installed(model: nn.Module) -> bool:
    """Whether every LoRA layer of ``model`` routes by the calling thread's names."""
    from peft.tuners.lora import LoraLayer

    return all(getattr(m, _ROUTED, False) for m in model.modules() if isinstance(m, LoraLayer))


@contextmanager
def route_rows(names: Sequence[str] | None) -> Iterator[None]:
    """Forward calls made by this thread inside the block send row ``i`` through adapter ``names[i]`` (:data:`BASE`:
    none). ``None``: no routing (a backbone without LoRA layers)."""
    previous = getattr(_thread, "names", None)
    _thread.names = list(names) if names is not None else None
    try:
        yield
    finally:
        _thread.names = previous
