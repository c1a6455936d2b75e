"""Training tokens/s on real protein lengths: protpeft (length-bucketed batches, each distinct protein of a batch
encoded once, in the calls the model makes: at most one row per pair, split further on CPU where that saves padding)
vs the plain loop a user would write (``benchmarks/peer_loop.py``: random batches, one call per member padded to its
own longest).

E. coli D-SCRIPT pairs (train split of a seeded random split), a random-weight ESM-2 8M, LoRA with the paper's
defaults on both sides (r 8, alpha 32, dropout 0.1, key+value of the last 8 layers; head dropout 0.1), batch 8 pairs,
AdamW, crop 1024. The two sides alternate step by step in this process, so machine load hits both alike.

Real tokens are every token of both proteins of every pair trained on (<cls> and <eos> included), the same count
for both sides; padding counts every token the backbone processes beyond the real ones of what it encodes, both
proteins, every call.

    .venv/bin/python -m benchmarks.bench_bucketing [--steps 24] [--batch 8]
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import ecoli_ppi_config, write_results
from benchmarks.peer_loop import PeerLoop
from protpeft.data.batching import epoch_batches
from protpeft.data.collate import TokenCollate, example_lengths
from protpeft.data.datasets import load_task_data
from protpeft.data.tokens import TokenEncoder
from protpeft.models import apply_mode, load_backbone
from protpeft.models.assembly import build_task_model
from protpeft.models.backbone import load_tokenizer
from protpeft.models.classifier import encoder_calls
from protpeft.trainer.context import WorkerContext
from protpeft.trainer.engines import LocalEngine
from protpeft.trainer.loop import _loss

WARMUP = 2


def encoded_tokens(inputs: dict[str, torch.Tensor], examples: int) -> tuple[int, int]:
    """(real, processed) tokens of one collated batch: each encoder call pads its rows to its longest."""
    lengths = inputs["attention_mask"].sum(1)
    calls = encoder_calls({"attention_mask": inputs["attention_mask"]}, examples)
    return int(lengths.sum()), sum(int(lengths[c].max()) * (c.stop - c.start) for c in calls)


class Side:
    """Accumulated seconds and tokens of one side."""

    def __init__(self, name: str, batching: str) -> None:
        self.name, self.batching = name, batching
        self.seconds = 0.0
        self.real = self.encoded = self.processed = 0

    def row(self, steps: int) -> dict:
        return {
            "side": self.name,
            "batching": self.batching,
            "steps": steps,
            "real_tokens": self.real,
            "processed_tokens": self.processed,
            "padding_fraction": 1 - self.encoded / self.processed,
            "seconds": self.seconds,
            "real_tokens_per_s": self.real / self.seconds,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24, help="timed optimizer steps per side")
    parser.add_argument("--batch", type=int, default=8, help="pairs per step")
    args = parser.parse_args()
    cfg = ecoli_ppi_config(f"optim.batch_size={args.batch}", "optim.lr=1e-4")
    data = load_task_data("ppi", cfg.data)
    examples = data.splits["train"]
    tokens = TokenEncoder(load_tokenizer(cfg.model.base), cfg.data.crop)
    collate = TokenCollate(tokens, data.sequences, members=2)
    lengths = example_lengths(examples, data.sequences, tokens)
    total = WARMUP + args.steps

    torch.manual_seed(0)
    backbone = apply_mode(load_backbone(cfg.model.base), "lora", cfg.lora)
    model = build_task_model(
        backbone, "ppi", cfg.model.pooling, cfg.model.head_hidden, cfg.model.head_dropout, tokens.special_ids
    ).train()
    engine = LocalEngine(model, cfg, total, WorkerContext.local("cpu"))
    loop = PeerLoop(
        cfg.model.base, "lora", last_layers=cfg.lora.last_layers, lora_dropout=cfg.lora.dropout,
        head_dropout=cfg.model.head_dropout, max_length=cfg.data.crop,
    )  # fmt: skip
    bucketed = epoch_batches(lengths, args.batch, seed=0, epoch=0, bucket=True, megabatch=cfg.data.bucket_megabatch)
    random_batches = epoch_batches(lengths, args.batch, seed=0, epoch=0, bucket=False)
    ours, theirs = Side("protpeft", "length-bucketed"), Side("plain loop", "random")
    for step in range(total):
        timed = step >= WARMUP
        # -- protpeft: collate + forward + backward + optimizer step, as the training loop does
        batch = [examples[i] for i in bucketed[step]]
        start = time.perf_counter()
        collated = collate(batch)
        engine.backward(_loss(engine, collated), True)
        engine.step()
        seconds = time.perf_counter() - start
        if timed:
            real, processed = encoded_tokens(collated["inputs"], len(batch))
            ours.seconds += seconds
            ours.real += sum(tokens.length(data.sequences[m]) for e in batch for m in e.members)
            ours.encoded += real
            ours.processed += processed
        # -- the loop: its own step on a random batch
        batch = [examples[i] for i in random_batches[step]]
        seqs = [[data.sequences[e.members[m]] for e in batch] for m in (0, 1)]
        seconds = loop.step(*seqs, [e.target[0] for e in batch])
        if timed:
            real = sum(tokens.length(s) for column in seqs for s in column)
            theirs.seconds += seconds
            theirs.real += real
            theirs.encoded += real
            theirs.processed += sum(loop.padded_tokens(column) for column in seqs)
    rows = [theirs.row(args.steps), ours.row(args.steps)]
    write_results(
        "bucketing",
        rows,
        {
            "speedup_real_tokens_per_s": rows[1]["real_tokens_per_s"] / rows[0]["real_tokens_per_s"],
            "model": "ESM-2 8M architecture, random weights; LoRA r8 alpha32 dropout 0.1, key+value, last 8 layers",
            "data": f"E. coli D-SCRIPT pairs (train split), batch {args.batch}, {WARMUP} warm-up steps per side",
            "padding": "every processed token that is not a real token, both proteins, every backbone call",
        },
    )


if __name__ == "__main__":
    main()
