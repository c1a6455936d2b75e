"""Memory readings of the benchmarks' own process: fields of ``/proc/self/status`` and what autograd keeps for a
step's backward."""

from __future__ import annotations

from pathlib import Path

import torch


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``, ``RssAnon``, ...); 0 where the kernel has none."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def saved_for_backward(step, layers: list[torch.nn.Module], k: int) -> dict[str, float]:
    """MiB of activations autograd keeps for the backward of ``step()`` (distinct storages, parameters excluded),
    split by where they were saved: encoder layers below k, layers k.., the rest (pooling, head, loss)."""
    params = {p.untyped_storage().data_ptr() for layer in layers for p in layer.parameters()}
    where = ["rest"]
    seen: dict[int, tuple[str, int]] = {}

    def enter(i: int):
        return lambda *_: where.__setitem__(0, "below k" if i < k else "from k")

    hooks = [layer.register_forward_pre_hook(enter(i)) for i, layer in enumerate(layers)]
    hooks += [layers[-1].register_forward_hook(lambda *_: where.__setitem__(0, "rest"))]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            seen.setdefault(storage.data_ptr(), (where[0], storage.nbytes()))
        return tensor

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            step()
    finally:
        for hook in hooks:
            hook.remove()
    return {part: sum(n for w, n in seen.values() if w == part) / 2**20 for part in ("below k", "from k", "rest")}
