"""What a LoRA step costs the host, set against the plain loop: the regime of a GPU at the paper's 4 pairs a step.

On the H200 (``benchmarks/RESULTS.md``) a LoRA step of the 650M shape uses 3 % of the card: the step's time is the
host's — Python, dispatching ~a thousand kernels, reading values back — not the arithmetic. This benchmark
measures that cost on the CPU, where it can be profiled every day: the ESM-2 650M's depth (33 layers, LoRA r8 on key
+ value of the last 8) at a width that computes almost nothing (hidden 32, 4 heads, FFN 64), on E. coli proteins
cropped to 48 tokens, one thread. Each way encodes a batch in one call as it does on an accelerator (protpeft's
CPU split into several calls is turned off: ``one_call``). Ways: the plain transformers + peft loop (its tokenizer
included, as a user's loop has it), protpeft with the prefix cache off, and with it on (filled first). Best of
``--repeats`` interleaved epochs per way; milliseconds per optimizer step.

What it cannot show: reads back from the device, which cost nothing on the CPU (``tests/unit/test_host_reads.py``
counts them), and the kernels' own time on a GPU.

    python -m benchmarks.bench_host_overhead [--pairs 64] [--batch 4] [--crop 48] [--repeats 6]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_prefix_cache import (
    SHAPES,
    epoch,
    pairs_of,
    plain_loop,
    protpeft_model,
    random_batches,
    setup,
    subset_options,
)
from benchmarks.common import train_on, write_results


def measure(args: argparse.Namespace, work: Path) -> tuple[list[dict], dict]:
    cfg, data, tokens = setup(args, work)
    examples, n = data.splits["train"], len(data.splits["train"])
    loop = plain_loop(cfg)
    off, collate, _ = protpeft_model(cfg, data, tokens, cache=False)
    on, _, fill = protpeft_model(cfg, data, tokens, cache=True)
    for engine in (off, on):
        engine.model.one_call = True  # as on an accelerator

    def loop_epoch(batches: list[list[int]]) -> float:
        start = time.perf_counter()
        for b in batches:
            loop.step(*pairs_of(data, b))
        return time.perf_counter() - start

    ways = {
        "transformers + peft loop": ("loop", loop_epoch),
        "protpeft, cache off": ("bucketed", lambda bs: train_on(off, collate, examples, bs)),
        "protpeft, cache on (epoch 2+)": ("bucketed", lambda bs: train_on(on, collate, examples, bs)),
    }
    best: dict[str, float] = {}
    for r in range(args.repeats + 1):  # the first round is untimed: lazy allocations, first calls
        bucketed = epoch(data, tokens, args.batch, r)
        for way, (batching, run) in ways.items():
            batches = random_batches(n, args.batch, r) if batching == "loop" else bucketed
            ms = 1000 * run(batches) / len(batches)
            if r and (way not in best or ms < best[way]):
                best[way] = ms
    loop_ms = best["transformers + peft loop"]
    rows = [{"way": way, "ms_per_step": ms, "vs_loop": loop_ms / ms} for way, ms in best.items()]
    shape, last = SHAPES["host"]
    notes = {
        "cache_off_vs_loop": loop_ms / best["protpeft, cache off"],
        "cache_on_vs_loop": loop_ms / best["protpeft, cache on (epoch 2+)"],
        "fill_seconds": fill,
        "model": f"ESM-2 architecture (layers, hidden, heads, FFN) = {shape}, random weights, LoRA r8 key+value on "
        f"the last {last} layers, fp32, one thread, one encoder call per batch",
        "data": f"E. coli D-SCRIPT pairs: first {n} training pairs, crop {args.crop}, {args.batch} pairs per step",
        "repeats": f"best of {args.repeats} interleaved epochs per way after an untimed one",
        "load_average": f"{os.getloadavg()[0]:.2f} (1 min) at the end",
        "command": " ".join(["python -m benchmarks.bench_host_overhead", *sys.argv[1:]]),
    }
    return rows, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    subset_options(parser, pairs=64, repeats=6)
    parser.set_defaults(crop=48)
    args = parser.parse_args()
    args.shape, args.quick = "host", False
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-host-"))
    try:
        write_results("host_overhead", *measure(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
