"""One rank of a 2-process gloo job for ``test_prefix_cache`` (run as a script: no Ray, the same
``run_training`` Ray Train's workers call): trains each config given, in order, and writes the losses, the
trained adapter + head and the prefix sequences (or, frozen, the embeddings) it computed (a config whose name starts
with ``nodes`` gives each rank its own cache directory, as nodes without a shared disk have) to
``OUT.rankR.safetensors`` / ``.json``.

    python prefix_ranks.py RANK WORLD PORT OUT CONFIG_JSON...
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from protpeft.config import RunConfig, with_values
from protpeft.trainer.context import WorkerContext
from protpeft.trainer.run import run_training


def main() -> None:
    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    summary, tensors = [], {}
    for i, raw in enumerate(sys.argv[5:]):
        cfg = RunConfig.model_validate(json.loads(raw))
        if cfg.name.startswith("nodes"):  # as if each rank ran on its own node, without a shared disk
            cfg = with_values(cfg, {"data.cache_dir": str(cfg.data.cache_dir / f"node{rank}")})
        result = run_training(cfg, ctx=WorkerContext.from_process_group(torch.device("cpu")))
        lines = (result.run_dir / "metrics.jsonl").read_text().splitlines() if rank == 0 else []
        losses = [r["train_loss"] for r in map(json.loads, lines) if "train_loss" in r]
        summary.append({"losses": losses, "computed": result.embedded_sequences, "steps": result.state.step})
        for name, param in result.model.named_parameters():
            if "lora_" in name or name.startswith("head."):
                tensors[f"{i}/{name}"] = param.detach().contiguous()
    save_file(tensors, f"{out}.rank{rank}.safetensors")
    with open(f"{out}.rank{rank}.json", "w") as fh:
        json.dump(summary, fh)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
