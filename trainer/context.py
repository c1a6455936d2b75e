"""Where this process sits in a training job: rank, world size, device, and the few collectives the loop needs.

One process (``WorkerContext.local()``) and a torch.distributed group (Ray Train's, or any other) look the same to
the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["WorkerContext"]


@dataclass
class WorkerContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @classmethod
    def local(cls, device: str | None = None) -> WorkerContext:
        chosen = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(device=torch.device(chosen))

    @classmethod
    def from_process_group(cls, device: torch.device) -> WorkerContext:
        if not (dist.is_available() and dist.is_initialized()):
            return cls(device=device)
        local_rank = (device.index or 0) if device.type == "cuda" else 0
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, device)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def mean(self, value: float) -> float:
        """The mean of a float over workers (for logging losses)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return float(t.item()) / self.world_size
