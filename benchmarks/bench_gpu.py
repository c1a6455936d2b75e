"""The CUDA paths on a lent GPU, side by side with the plain transformers + peft loop a user would write, in bf16.

1. LoRA (r8, key+value, last 8 layers) on the ESM-2 650M shape (33 layers, hidden 1280, random weights): the loop
   (random batches, the tokenizer padding all 2B proteins together), protpeft with the prefix cache off (bucketed
   batches, each protein once), with it on (epoch 1 fills it, epoch 2+ reads it). Real residues per second, padding
   counted over every token the encoder computes, MFU, and each way's step memory on the longest random batch.
2. Full fine-tuning of the same shape: the loop (AdamW, bf16 autocast), protpeft's plain engine (the same), and
   protpeft's DeepSpeed ZeRO-2 engine with DeepSpeed's bf16 (what ``engine.strategy=deepspeed`` runs, in one
   process on an NCCL group); that its fp32 weights come back consolidated and moved.

Every way trains with fp32 master weights and bf16 compute. MFU counts the model FLOPs of a step on real tokens
(<cls>/<eos> included, padding not): 24·n·h² + 4·n²·h per layer and sequence forward (h the hidden size, the FFN
4h wide), LoRA = every layer forward + the last 8 backward for input gradients only (frozen weights), full = 3×
every layer; the cache-on figure counts the same model FLOPs (its speed-up shows as MFU above the hardware's
share). Peak: the H200's dense bf16 989 TFLOP/s.

    python -m benchmarks.bench_gpu [--pairs 256] [--batch 4] [--crop 1024] [--repeats 2] [--sections lora,full]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from benchmarks.bench_prefix_cache import (
    SHAPES,
    computed_tokens,
    epoch,
    pairs_of,
    plain_loop,
    protpeft_model,
    random_batches,
    result_row,
    setup,
    subset_options,
)
from benchmarks.common import train_on, write_results

PEAK_FLOPS = 989e12
"""Dense bf16 tensor-core peak of an H100/H200 SXM (NVIDIA's datasheet figure without sparsity)."""


def step_flops(data, tokens, batches: list[list[int]], hidden: int, layer_equivalents: int) -> float:
    """Model FLOPs of training on ``batches``: ``layer_equivalents`` forward passes of one layer per sequence."""
    examples, total = data.splits["train"], 0.0
    for b in batches:
        for i in b:
            for m in examples[i].members:
                n = tokens.length(data.sequences[m])
                total += 24 * n * hidden**2 + 4 * n * n * hidden
    return total * layer_equivalents


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def synced(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def step_rise_mib(step, batch) -> float:
    """GPU memory a step allocates above what is held before it (activations, gradients, temporaries)."""
    if not torch.cuda.is_available():
        step(batch)  # --smoke on a CPU: the path runs, nothing to read
        return 0.0
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step(batch)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


class Ways:
    """Named training ways over one data subset, timed interleaved (best of ``repeats`` epochs each)."""

    def __init__(self, args, cfg, data, tokens, layer_equivalents) -> None:
        from transformers import AutoConfig

        shape = AutoConfig.from_pretrained(str(cfg.model.base))
        self.args, self.data, self.tokens = args, data, tokens
        self.hidden = shape.hidden_size
        self.layer_equivalents = layer_equivalents(shape.num_hidden_layers)
        self.n = len(data.splits["train"])

    def row(self, way: str, batches: list[list[int]], seconds: float, epoch_no) -> dict:
        accelerator = self.args.device != "cpu"
        row = result_row(self.data, self.tokens, self.args.crop, way, batches, seconds, epoch_no, accelerator)
        flops = step_flops(self.data, self.tokens, batches, self.hidden, self.layer_equivalents)
        return row | {"model_tflops_per_s": flops / seconds / 1e12, "mfu": flops / seconds / PEAK_FLOPS}

    def memory(self, ways: dict[str, tuple[str, object]]) -> dict[str, float]:
        """Each way's :func:`step_rise_mib` on the random batch the loop pads most."""
        longest = max(random_batches(self.n, self.args.batch, 0),
                      key=lambda b: computed_tokens(self.data, self.tokens, [b], "loop"))  # fmt: skip
        return {way: step_rise_mib(lambda b, t=train: t([b]), longest) for way, (_, train) in ways.items()}

    def profile(self, ways: dict[str, tuple[str, object]], steps: int) -> dict[str, dict[str, float]]:
        """Per step of each way under ``torch.profiler`` (``--profile`` steps): kernel launches, host waits for the
        device (stream/device synchronisation, blocking copies), values read back to the host (``.item()``,
        ``int(tensor)``: ``aten::_local_scalar_dense``) and wall milliseconds. A step bound by launches shows as
        many launches and few waits; a host sync before the forward shows as a wait per step."""
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        batches = {"loop": random_batches(self.n, self.args.batch, 0)[:steps],
                   "bucketed": epoch(self.data, self.tokens, self.args.batch, 0)[:steps]}  # fmt: skip
        found: dict[str, dict[str, float]] = {}
        for way, (batching, train) in ways.items():
            with profile(activities=activities) as prof:
                seconds = synced(lambda b=batches[batching], t=train: t(b))
            counts = {event.key: event.count for event in prof.key_averages()}

            def per_step(*names: str, counts: dict[str, int] = counts) -> float:
                return sum(counts.get(n, 0) for n in names) / steps

            found[way] = {
                "kernel_launches": per_step("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel"),
                "host_waits": per_step("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy"),
                "values_read_back": per_step("aten::_local_scalar_dense"),
                "wall_ms": 1000 * seconds / steps,
            }
        return found

    def best(self, ways: dict[str, tuple[str, object]]) -> dict[str, dict]:
        """``ways``: name → ("loop" | "bucketed", train(batches))."""
        best: dict[str, dict] = {}
        for r in range(self.args.repeats):
            bucketed = epoch(self.data, self.tokens, self.args.batch, r + 1)
            for way, (batching, train) in ways.items():
                batches = random_batches(self.n, self.args.batch, r) if batching == "loop" else bucketed
                seconds = synced(lambda b=batches, t=train: t(b))
                result = self.row(way, batches, seconds, "2+" if way.endswith("cache on") else "any")
                if way not in best or result["seconds"] < best[way]["seconds"]:
                    best[way] = result
        return best


def lora_section(args, work: Path) -> dict:
    cfg, data, tokens = setup(args, work, f"engine.precision={args.precision}")
    n = len(data.splits["train"])
    ways = Ways(args, cfg, data, tokens, lambda layers: layers + cfg.lora.last_layers)
    examples = data.splits["train"]
    bf16 = args.precision == "bf16"
    loop = plain_loop(cfg, "lora", args.device, bf16)
    off, collate, _ = protpeft_model(cfg, data, tokens, cache=False, device=args.device)
    on, _, fill = protpeft_model(cfg, data, tokens, cache=True, device=args.device)
    first = epoch(data, tokens, args.batch, 0)
    for b in random_batches(n, args.batch, 99):  # untimed: a GPU meets each batch shape once slowly (allocator
        loop.step(*pairs_of(data, b))  # blocks, kernel choices), and the timed ways should not pay for that
    train_on(off, collate, examples, first)  # the shapes of the cache-on way's first epoch too
    filling = ways.row("protpeft, cache on (filling)", first, fill + train_on(on, collate, examples, first), 1)
    spec = {
        "transformers + peft loop": ("loop", lambda bs: [loop.step(*pairs_of(data, b)) for b in bs]),
        "protpeft, cache off": ("bucketed", lambda bs: train_on(off, collate, examples, bs)),
        "protpeft, cache on": ("bucketed", lambda bs: train_on(on, collate, examples, bs)),
    }
    best, memory = ways.best(spec), ways.memory(spec)
    profiled = ways.profile(spec, args.profile) if args.profile else {}
    rows = [best["transformers + peft loop"], best["protpeft, cache off"], filling, best["protpeft, cache on"]]
    loop_rate, off_rate, on_rate = (rows[i]["residues_per_s"] for i in (0, 1, 3))
    notes = {
        "epoch2_vs_cache_off": on_rate / off_rate,
        "epoch2_vs_loop": on_rate / loop_rate,
        "cache_off_vs_loop": off_rate / loop_rate,
        "fill_seconds": fill,
        "step_memory_rise_mib": memory,
        "profile_per_step": profiled,
        "model": f"{args.preset} architecture, random weights, LoRA r8 key+value on the last "
        f"{cfg.lora.last_layers} layers, {args.precision} autocast over fp32 weights",
        "data": f"E. coli D-SCRIPT pairs: first {n} training pairs ({len(set(data.sequences.values()))} proteins), "
        f"crop {args.crop}, {args.batch} pairs per step",
    }
    return {"rows": rows, "notes": notes}


def full_section(args, work: Path) -> dict:
    from protpeft.models.assembly import build_task_model
    from protpeft.models.backbone import load_backbone
    from protpeft.models.modes import apply_mode
    from protpeft.trainer.context import WorkerContext
    from protpeft.trainer.deepspeed_engine import DeepSpeedEngine
    from protpeft.trainer.engines import LocalEngine

    overrides = ["mode=full", f"engine.precision={args.precision}", "engine.zero_stage=2", "optim.lr=2e-5"]
    cfg, data, tokens = setup(args, work, *overrides)
    examples, n = data.splits["train"], len(data.splits["train"])
    from protpeft.data.collate import TokenCollate

    collate = TokenCollate(tokens, data.sequences, 2)
    ctx = WorkerContext.local(args.device)

    def model():
        torch.manual_seed(0)
        backbone = apply_mode(load_backbone(str(cfg.model.base)), "full", cfg.lora)
        return build_task_model(backbone, "ppi", "mean", 128, 0.1, tokens.special_ids)

    loop = plain_loop(cfg, "full", args.device, args.precision == "bf16")
    local = LocalEngine(model(), cfg, 10**6, ctx)
    trained = model()
    before = {k: v.detach().clone() for k, v in trained.encoder.backbone.named_parameters()}
    ds = DeepSpeedEngine(trained, cfg, 10**6, ctx)
    for b in random_batches(n, args.batch, 99):  # untimed, as in the LoRA section
        loop.step(*pairs_of(data, b))
    for engine in (local, ds):
        train_on(engine, collate, examples, epoch(data, tokens, args.batch, 0))
    ways = Ways(args, cfg, data, tokens, lambda layers: 3 * layers)
    spec = {
        "transformers loop (full, AdamW)": ("loop", lambda bs: [loop.step(*pairs_of(data, b)) for b in bs]),
        "protpeft full, plain engine": ("bucketed", lambda bs: train_on(local, collate, examples, bs)),
        f"protpeft full, DeepSpeed ZeRO-2 {args.precision}": (
            "bucketed",
            lambda bs: train_on(ds, collate, examples, bs),
        ),
    }
    best, memory = ways.best(spec), ways.memory(spec)
    trained = ds.consolidated_backbone(ds.engine.module.encoder.backbone)
    after = dict(trained.named_parameters())
    moved = max(float((after[k].detach().float() - v).abs().max()) for k, v in before.items())
    rows = list(best.values())
    notes = {
        "plain_engine_vs_loop": rows[1]["residues_per_s"] / rows[0]["residues_per_s"],
        "deepspeed_vs_loop": rows[2]["residues_per_s"] / rows[0]["residues_per_s"],
        "step_memory_rise_mib": memory,
        "deepspeed": {
            "backend": torch.distributed.get_backend(),
            "bf16_enabled": bool(ds.engine.bfloat16_enabled()),
            "zero_stage": ds.stage,
            "consolidated_dtypes": sorted({str(p.dtype) for p in after.values()}),
            "max_abs_weight_change": moved,
        },
        "model": f"{args.preset} architecture, random weights, every weight trained, {args.precision}",
        "data": f"E. coli D-SCRIPT pairs: first {n} training pairs, crop {args.crop}, {args.batch} pairs per step",
    }
    return {"rows": rows, "notes": notes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    subset_options(parser, pairs=256, repeats=2)
    parser.add_argument("--sections", default="lora,full", help="which to run, comma-separated")
    parser.add_argument("--out", type=Path, help="also write every section's JSON here")
    parser.add_argument("--smoke", action="store_true", help="the tiny model on the CPU in fp32: the code paths only")
    parser.add_argument("--profile", type=int, default=0, help="LoRA: profile this many steps of each way (0: none)")
    args = parser.parse_args()
    if not (torch.cuda.is_available() or args.smoke):
        raise SystemExit("skipped: no CUDA device")
    args.quick, args.shape = args.smoke, "quick" if args.smoke else "650M"
    args.preset = SHAPES[args.shape][0]
    args.device, args.precision = ("cpu", "fp32") if args.smoke else ("cuda", "bf16")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    env = {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda}
    print(json.dumps(env), flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    failed = False
    try:
        for name, section in (("lora", lora_section), ("full", full_section)):
            if name not in args.sections.split(","):
                continue
            started = time.perf_counter()
            try:
                result = section(args, work)
            except Exception:  # one section's failure is reported; the next still runs
                traceback.print_exc()
                failed = True
                continue
            result["notes"].update(env=env, section_seconds=time.perf_counter() - started,
                                   command=" ".join(["python -m benchmarks.bench_gpu", *sys.argv[1:]]))  # fmt: skip
            write_results(f"gpu_{name}" + ("_smoke" if args.smoke else ""), result["rows"], result["notes"])
            if args.out:
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / f"gpu_{name}.json").write_text(json.dumps(result, indent=2))
            torch.cuda.empty_cache()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
