"""LoRA training with the prefix cache vs without it vs the plain loop a user would write, on E. coli lengths.

Model: a random ESM-2 150M architecture (30 layers, hidden 640, 20 heads, intermediate 2560), LoRA r8 on key and
value of the last 8 layers (the paper's recipe), mean pooling + the paper's head, AdamW, fp32, dropout 0 in the
backbone. Data: a subset of the E. coli D-SCRIPT pairs (seeded random split, the first ``--pairs`` training pairs,
crop ``--crop``); one epoch = one pass over them. Three ways, side by side in this process, the same pairs:

- loop: transformers ``EsmModel`` + peft, the tokenizer padding all 2B proteins of a random batch together;
- protpeft, cache off: the run's model, collate and engine (``LocalEngine``), bucketed batches;
- protpeft, cache on: the same with ``prefix_cached`` (the run's hook): epoch 1 includes filling the cache (every
  protein of the subset through layers 0..21 once), epoch 2 reads it.

Figure: real residues (no <cls>/<eos>, no padding) per second, the best of ``--repeats`` epochs per way measured
interleaved (the machine is shared; the cache-on epoch 1, which fills, is measured once); padding counts every
token the encoder layers compute that is not a residue. Memory, in a fresh process per way (see :func:`probe`):
after a warm-up step, one step on the longest random batch — the process's peak resident set, the step's rise over
the resident set before it, anonymous vs file-backed memory, and the activations autograd keeps for backward, split
into layers below k, from k, and the rest (none below k in any way: PyTorch keeps nothing for frozen layers whose
inputs need no grad).

    .venv/bin/python -m benchmarks.bench_prefix_cache [--pairs 24] [--batch 4] [--crop 1024] [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import ROOT, ecoli_or_exit, train_on, write_results
from benchmarks.memory_probe import saved_for_backward, status_kib

SHAPES: dict[str, tuple[str | tuple[int, int, int, int], int]] = {
    "full": ("esm2_t30_150M_UR50D", 8),
    "quick": ("tiny", 2),
    "650M": ("esm2_t33_650M_UR50D", 8),
    "host": ((33, 32, 4, 64), 8),  # 650M's depth at a width that computes nothing: bench_host_overhead
}
"""name -> (an ESM-2 preset, or (layers, hidden, heads, FFN width); LoRA on this many last layers)."""


# -- protpeft's own pieces


def shape_of(args: argparse.Namespace) -> str:
    return getattr(args, "shape", None) or ("quick" if args.quick else "full")


def setup(args: argparse.Namespace, work: Path, *overrides: str):
    """The config, the subset as TaskData, the tokens and the model checkpoint of the benchmark."""
    from protpeft.config import load_config
    from protpeft.data.datasets import TaskData, load_task_data
    from protpeft.data.tokens import TokenEncoder
    from protpeft.models.backbone import ESM2_PRESETS, init_tiny, load_tokenizer

    data_dir = ecoli_or_exit()
    preset, last = SHAPES[shape_of(args)]
    base = work / "model"
    if not (base / "config.json").is_file():
        init_tiny(base, *(ESM2_PRESETS[preset] if isinstance(preset, str) else preset))
    cfg = load_config(
        None,
        [
            f"model.base={base}",
            f"data.pairs={data_dir / 'ecoli_test.tsv'}",
            f"data.sequences={data_dir / 'ecoli.fasta'}",
            "data.split.method=random",
            f"data.crop={args.crop}",
            f"data.cache_dir={work / 'cache'}",
            f"lora.last_layers={last}",
            "lora.dropout=0",
            f"optim.batch_size={args.batch}",
            "optim.grad_accum=1",
            "optim.lr=1e-4",
            *overrides,
        ],
    )
    full = load_task_data("ppi", cfg.data)
    train = full.splits["train"][: args.pairs]
    sequences = {m: full.sequences[m] for e in train for m in e.members}
    data = TaskData("ppi", full.label_names, sequences, {"train": train, "val": [], "test": []}, full.fingerprint)
    return cfg, data, TokenEncoder(load_tokenizer(str(base)), cfg.data.crop)


def protpeft_model(cfg, data, tokens, cache: bool, device: str = "cpu"):
    """(engine, collate, seconds spent filling the cache) exactly as ``run_training`` builds them."""
    from protpeft.data.collate import TokenCollate
    from protpeft.models.assembly import build_task_model
    from protpeft.models.backbone import backbone_fingerprint, load_backbone
    from protpeft.models.modes import apply_mode
    from protpeft.trainer.context import WorkerContext
    from protpeft.trainer.engines import LocalEngine
    from protpeft.trainer.prefix import map_prefix_weights, prefix_cached

    torch.manual_seed(0)
    ctx = WorkerContext.local(device)
    backbone = load_backbone(str(cfg.model.base))
    fingerprint = backbone_fingerprint(backbone)
    model = build_task_model(apply_mode(backbone, "lora", cfg.lora), "ppi", "mean", 128, 0.1, tokens.special_ids)
    start = time.perf_counter()
    if cache:
        model, _ = prefix_cached(cfg, data, model, tokens, fingerprint, ctx)
    if device != "cpu":
        torch.cuda.synchronize()
    fill = time.perf_counter() - start
    engine = LocalEngine(model, cfg, 10**6, ctx)
    map_prefix_weights(model, "local", data, ctx)
    return engine, TokenCollate(tokens, data.sequences, 2), fill


def epoch(data, tokens, batch: int, seed: int) -> list[list[int]]:
    from protpeft.data.batching import epoch_batches
    from protpeft.data.collate import example_lengths

    lengths = example_lengths(data.splits["train"], data.sequences, tokens)
    return epoch_batches(lengths, batch, seed=0, epoch=seed, bucket=True, megabatch=50)


def random_batches(n: int, batch: int, seed: int) -> list[list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i : i + batch] for i in range(0, n - batch + 1, batch)]


def residues(data, batches: list[list[int]], crop: int) -> int:
    examples = data.splits["train"]
    return sum(min(len(data.sequences[m]), crop - 2) for b in batches for i in b for m in examples[i].members)


def computed_tokens(data, tokens, batches: list[list[int]], way: str, accelerator: bool = False) -> int:
    """Tokens the encoder layers compute, padding and <cls>/<eos> included (see :func:`encoded`)."""
    return encoded(data, tokens, batches, way, accelerator)[0]


def encoded(data, tokens, batches: list[list[int]], way: str, accelerator: bool = False) -> tuple[int, int]:
    """``(tokens computed, residues among them)`` by the encoder layers, padding and <cls>/<eos> included in the
    first. The loop pads a batch's 2B proteins to the longest of them; protpeft encodes each distinct protein once,
    longest first, in the calls the model makes on this kind of device
    (:func:`~protpeft.models.classifier.encoder_calls`), each padded to its own longest: a protein twice in a batch
    is computed (and counted) once."""
    from protpeft.data.collate import member_inputs
    from protpeft.models.classifier import encoder_calls

    examples, total, real = data.splits["train"], 0, 0
    for b in batches:
        columns = [[data.sequences[examples[i].members[m]] for i in b] for m in range(2)]
        if way == "loop":
            total += 2 * len(b) * max(tokens.length(s) for column in columns for s in column)
            real += sum(tokens.length(s) - 2 for column in columns for s in column)
            continue
        mask = member_inputs(tokens, columns)["attention_mask"]
        for part in encoder_calls({"attention_mask": mask}, len(b), accelerator):
            total += mask[part].shape[0] * int(mask[part].sum(1).max())
        real += int(mask.sum()) - 2 * mask.shape[0]
    return total, real


def result_row(
    data, tokens, crop: int, way: str, batches, seconds: float, epoch_no, accelerator: bool = False
) -> dict:
    """A table row: real residues per second of ``way`` (``loop`` in its name: the plain loop's padding). Real
    residues are the task's (both proteins of every pair, cropped), the same for every way; the padding fraction is
    of what the way computes (a protein twice in a batch is one row for protpeft, two for the loop)."""
    real = residues(data, batches, crop)
    computed, encoded_residues = encoded(data, tokens, batches, "loop" if "loop" in way else "calls", accelerator)
    return {
        "way": way,
        "epoch": epoch_no,
        "steps": len(batches),
        "real_residues": real,
        "padding_fraction": 1 - encoded_residues / computed,
        "seconds": seconds,
        "residues_per_s": real / seconds,
    }


def pairs_of(data, batch: list[int]) -> tuple[list[str], list[str], list[float]]:
    """The loop's arguments for a batch of training pairs: proteins A, proteins B, labels."""
    examples = [data.splits["train"][i] for i in batch]
    return (
        [data.sequences[e.members[0]] for e in examples],
        [data.sequences[e.members[1]] for e in examples],
        [e.target[0] for e in examples],
    )


def plain_loop(cfg, mode: str = "lora", device: str = "cpu", bf16: bool = False):
    """The peer of this benchmark: the plain loop with one tokenizer call over both proteins of every pair."""
    from benchmarks.peer_loop import PeerLoop

    return PeerLoop(
        str(cfg.model.base), mode, last_layers=cfg.lora.last_layers, lr=cfg.optim.lr, max_length=cfg.data.crop,
        one_call=True, device=device, bf16=bf16,
    )  # fmt: skip


# -- peak memory of one step, in a fresh process per way


def probe(args: argparse.Namespace) -> None:
    """One way in a fresh process: after a warm-up step, one training step on the longest batch; prints the
    process's resident memory before it, the process's peak (its high-water mark VmHWM over set-up and both
    steps: ``getrusage``'s maxrss is no use in a child, which inherits its parent's at fork), the step's rise over
    the resident set before it, anonymous vs file-backed resident memory after it, and what autograd saved for
    backward."""
    from protpeft.models.prefix import esm_model

    work = Path(args.work)
    cfg, data, tokens = setup(args, work)
    batches = random_batches(len(data.splits["train"]), args.batch, 0)
    shortest, longest = sorted(batches, key=lambda b: computed_tokens(data, tokens, [b], "loop"))[:: len(batches) - 1]
    mapped = 0
    if args.probe == "loop":
        loop = plain_loop(cfg)
        step = lambda b: loop.step(*pairs_of(data, b))  # noqa: E731
        backbone = loop.backbone
    else:
        engine, collate, _ = protpeft_model(cfg, data, tokens, cache=args.probe == "cache on")
        step = lambda b: train_on(engine, collate, data.splits["train"], [b])  # noqa: E731
        encoder = engine.model.encoder
        backbone = encoder.backbone
        if hasattr(encoder, "prefix_parameters"):
            mapped = sum(p.nbytes for p in encoder.prefix_parameters().values())
    layers = list(esm_model(backbone).encoder.layer)
    step(shortest)  # one-time allocations (optimizer state, kernels) are not the step's working memory
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed memory back to the OS: the rise is the step's own
    peak = status_kib("VmHWM")
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark (VmHWM)
    before = status_kib("VmRSS")
    saved = saved_for_backward(lambda: step(longest), layers, len(layers) - cfg.lora.last_layers)
    mib = lambda kib: kib / 1024  # noqa: E731
    print(json.dumps({
        "rss_before_step_mib": mib(before),
        "step_rise_mib": mib(status_kib("VmHWM") - before),
        "peak_rss_mib": mib(max(peak, status_kib("VmHWM"))),
        "anon_after_mib": mib(status_kib("RssAnon")),
        "file_after_mib": mib(status_kib("RssFile")),
        "saved_for_backward_mib": saved,
        "frozen_prefix_weights_mapped_mib": mapped / 2**20,
    }))  # fmt: skip


def step_memory(args: argparse.Namespace, work: Path, way: str) -> dict[str, float]:
    cmd = [sys.executable, "-m", "benchmarks.bench_prefix_cache", "--probe", way, "--work", str(work)]
    cmd += ["--pairs", str(args.pairs), "--batch", str(args.batch), "--crop", str(args.crop)]
    cmd += ["--quick"] if args.quick else []
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the run


def subset_options(parser: argparse.ArgumentParser, pairs: int, repeats: int) -> None:
    """The options that pick the E. coli subset and how it is timed."""
    parser.add_argument("--pairs", type=int, default=pairs, help="training pairs in the subset (one epoch)")
    parser.add_argument("--batch", type=int, default=4, help="pairs per step (the paper's and the config's)")
    parser.add_argument("--crop", type=int, default=1024, help="tokens per protein at most (the paper's crop)")
    parser.add_argument("--repeats", type=int, default=repeats, help="interleaved epochs per way; the best is kept")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    subset_options(parser, pairs=24, repeats=2)
    parser.add_argument("--quick", action="store_true", help="tiny 4-layer model, LoRA on 2 layers: a smoke run")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(args)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-prefix-"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    load = os.getloadavg()
    cfg, data, tokens = setup(args, work)
    n = len(data.splits["train"])
    crop = cfg.data.crop
    examples = data.splits["train"]
    loop = plain_loop(cfg)
    off, collate, _ = protpeft_model(cfg, data, tokens, cache=False)
    on, _, fill = protpeft_model(cfg, data, tokens, cache=True)

    def row(way: str, batches: list[list[int]], seconds: float, epoch_no: int | str) -> dict:
        return result_row(data, tokens, crop, way, batches, seconds, epoch_no)

    warm = random_batches(n, args.batch, 99)[:1]  # one untimed step each: lazy allocations, kernels
    loop.step(*pairs_of(data, warm[0]))
    for engine in (off, on):
        train_on(engine, collate, examples, warm)
    batches = epoch(data, tokens, args.batch, 0)
    filling = row("protpeft, cache on (filling)", batches, fill + train_on(on, collate, examples, batches), 1)

    def loop_epoch(batches: list[list[int]]) -> float:
        start = time.perf_counter()
        for b in batches:
            loop.step(*pairs_of(data, b))
        return time.perf_counter() - start

    best: dict[str, dict] = {}
    for r in range(args.repeats):  # interleaved, best of each: contention hits every way alike
        bucketed = epoch(data, tokens, args.batch, r + 1)
        for way, batches, seconds in (
            ("transformers + peft loop", random_batches(n, args.batch, r), loop_epoch),
            ("protpeft, cache off", bucketed, lambda b: train_on(off, collate, examples, b)),
            ("protpeft, cache on", bucketed, lambda b: train_on(on, collate, examples, b)),
        ):
            result = row(way, batches, seconds(batches), "2+" if "on" in way else "any")
            if way not in best or result["seconds"] < best[way]["seconds"]:
                best[way] = result
    rows = [*list(best.values())[:2], filling, best["protpeft, cache on"]]
    memory = {way: step_memory(args, work, way) for way in ("loop", "cache off", "cache on")}
    loop_rate, off_rate, on_rate = (rows[i]["residues_per_s"] for i in (0, 1, 3))
    preset, last = SHAPES[shape_of(args)]
    write_results(
        "prefix_cache" + ("_quick" if args.quick else ""),
        rows,
        {
            "epoch2_vs_cache_off": on_rate / off_rate,
            "epoch2_vs_loop": on_rate / loop_rate,
            "cache_off_vs_loop": off_rate / loop_rate,
            "fill_seconds": fill,
            "repeats": f"best of {args.repeats} interleaved epochs per way (filling: once)",
            "step_memory_mib": memory,
            "model": f"{preset} architecture, random weights, LoRA r8 key+value on the last {last} layers, fp32",
            "data": f"E. coli D-SCRIPT pairs: first {n} training pairs ({len(set(data.sequences.values()))} "
            f"proteins), crop {crop}, {args.batch} pairs per step",
            "load_average": f"{load[0]:.2f} before, {os.getloadavg()[0]:.2f} after (1 min; 2 cores)",
            "command": " ".join(["python -m benchmarks.bench_prefix_cache", *sys.argv[1:]]),
        },
    )


if __name__ == "__main__":
    main()
