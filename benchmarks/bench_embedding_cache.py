"""Frozen-mode epoch time with the embedding cache vs without it (backbone forward every epoch).

Both train the same head on the same examples for one epoch. "cold" includes filling the cache (one backbone pass
over each unique sequence); "warm" is any later epoch or job with the same backbone, pooling and crop.

    .venv/bin/python -m benchmarks.bench_embedding_cache [--pairs 800]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from benchmarks.common import ecoli_ppi_config, train_on, write_results
from protpeft.data.batching import epoch_batches
from protpeft.data.collate import IndexCollate, TokenCollate, example_lengths
from protpeft.data.datasets import load_task_data
from protpeft.data.tokens import TokenEncoder
from protpeft.embeddings import EmbeddingCache, embed_sequences
from protpeft.models import ClassificationHead, ProteinClassifier, ProteinEncoder, apply_mode, load_backbone
from protpeft.models.backbone import backbone_fingerprint, load_tokenizer
from protpeft.trainer.context import WorkerContext
from protpeft.trainer.engines import LocalEngine


def one_epoch(cfg, model, collate, examples, lengths) -> float:
    engine = LocalEngine(model, cfg, 10**6, WorkerContext.local("cpu"))
    return train_on(engine, collate, examples, epoch_batches(lengths, cfg.optim.batch_size, seed=0, epoch=0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=800, help="training pairs in the epoch")
    args = parser.parse_args()
    cfg = ecoli_ppi_config("mode=frozen", f"data.max_examples={args.pairs}", "optim.batch_size=16")
    base = cfg.model.base
    data = load_task_data("ppi", cfg.data)
    examples = data.splits["train"]
    sequences = {m: data.sequences[m] for e in examples for m in e.members}
    tokens = TokenEncoder(load_tokenizer(str(base)), cfg.data.crop)
    lengths = example_lengths(examples, sequences, tokens)
    backbone = apply_mode(load_backbone(str(base)), "frozen", cfg.lora)
    encoder = ProteinEncoder(backbone, "mean", tokens.special_ids)
    head = lambda: ClassificationHead(backbone.config.hidden_size, 128, 1, 0.1)  # noqa: E731

    torch.manual_seed(0)
    no_cache = one_epoch(
        cfg, ProteinClassifier(encoder, head(), 2), TokenCollate(tokens, sequences, 2), examples, lengths
    )
    cache = EmbeddingCache(tempfile.mkdtemp(), backbone_fingerprint(backbone), "mean", cfg.data.crop)
    embed = lambda seqs: embed_sequences(encoder, tokens, seqs, 32, "cpu")  # noqa: E731
    start = time.perf_counter()
    table, rows_of, embedded = cache.table(sequences, embed)
    fill = time.perf_counter() - start
    start = time.perf_counter()
    table, rows_of, again = cache.table(sequences, embed)
    reopen = time.perf_counter() - start
    from protpeft.models import EmbeddingTable

    warm = one_epoch(
        cfg, ProteinClassifier(EmbeddingTable(table), head(), 2), IndexCollate(rows_of, 2), examples, lengths
    )
    rows = [
        {"variant": "no cache (backbone every epoch)", "epoch_s": no_cache, "sequences_embedded": len(examples) * 2},
        {"variant": "cache, cold (fill + epoch)", "epoch_s": fill + warm, "sequences_embedded": embedded},
        {"variant": "cache, warm (reopen + epoch)", "epoch_s": reopen + warm, "sequences_embedded": again},
    ]
    write_results(
        "embedding_cache",
        rows,
        {
            "warm_speedup": no_cache / (reopen + warm),
            "cold_speedup": no_cache / (fill + warm),
            "pairs": len(examples),
            "unique_sequences": len(set(sequences.values())),
            "model": "ESM-2 8M architecture, random weights, frozen, batch 16",
        },
    )


if __name__ == "__main__":
    main()
