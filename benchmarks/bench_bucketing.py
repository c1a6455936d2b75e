"""Training tokens/s with length-bucketed batches vs plain random batches, on the E. coli length distribution.

Same model (random ESM-2 8M architecture, LoRA on the last 2 layers), same examples, same number of optimizer
steps; only the batch order differs. Real (non-padding) tokens per second is the figure that matters.

    .venv/bin/python -m benchmarks.bench_bucketing [--steps 24] [--batch 8]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import ecoli_ppi_config, train_on, write_results
from protpeft.data.batching import epoch_batches, padded_tokens
from protpeft.data.collate import TokenCollate, example_lengths
from protpeft.data.datasets import load_task_data
from protpeft.data.tokens import TokenEncoder
from protpeft.models import ClassificationHead, ProteinClassifier, ProteinEncoder, apply_mode, load_backbone
from protpeft.models.backbone import load_tokenizer
from protpeft.trainer.context import WorkerContext
from protpeft.trainer.engines import LocalEngine


def measure(cfg, examples, collate, lengths, bucket: bool, steps: int) -> dict:
    torch.manual_seed(0)
    backbone = apply_mode(load_backbone(cfg.model.base), "lora", cfg.lora)
    tokens = collate.tokens
    model = ProteinClassifier(
        ProteinEncoder(backbone, "mean", tokens.special_ids),
        ClassificationHead(backbone.config.hidden_size, 128, 1, 0.1),
        2,
    )
    engine = LocalEngine(model, cfg, steps, WorkerContext.local("cpu"))
    batches = epoch_batches(lengths, cfg.optim.batch_size, seed=0, epoch=0, bucket=bucket, megabatch=50)[: steps + 2]
    train_on(engine, collate, examples, batches[:2])  # warm-up, not timed
    real, padded = padded_tokens(batches[2:], lengths)
    seconds = train_on(engine, collate, examples, batches[2:])
    return {
        "batching": "bucketed" if bucket else "random",
        "steps": steps,
        "real_tokens": real,
        "padded_tokens": padded,
        "padding_fraction": 1 - real / padded,
        "seconds": seconds,
        "real_tokens_per_s": real / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    cfg = ecoli_ppi_config(f"optim.batch_size={args.batch}", "lora.last_layers=2")
    data = load_task_data("ppi", cfg.data)
    examples = data.splits["train"]
    tokens = TokenEncoder(load_tokenizer(cfg.model.base), cfg.data.crop)
    collate = TokenCollate(tokens, data.sequences, members=2)
    lengths = example_lengths(examples, data.sequences, tokens)
    rows = [measure(cfg, examples, collate, lengths, bucket, args.steps) for bucket in (False, True)]
    speedup = rows[1]["real_tokens_per_s"] / rows[0]["real_tokens_per_s"]
    write_results(
        "bucketing",
        rows,
        {
            "speedup_real_tokens_per_s": speedup,
            "model": "ESM-2 8M architecture, random weights, LoRA r8 last 2 layers",
            "data": "E. coli D-SCRIPT pairs (train split)",
        },
    )


if __name__ == "__main__":
    main()
