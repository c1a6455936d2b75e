"""Where an epoch-2 step of LoRA with the prefix cache spends its time.

The same model, data and batches as ``bench_prefix_cache`` (150M architecture, LoRA on the last 8 of 30 layers,
E. coli lengths, 4 pairs per step). The cache is filled first (epoch 1); then the steps of a bucketed epoch are
timed phase by phase — collate, cache lookup, forward (suffix + pooling + head + loss), backward, optimizer — in
wall and CPU seconds, and set against the bare suffix (``suffix(inputs_embeds)`` forward + backward of a sum on the
same padded calls): what is left over is protpeft's per-step cost on top of the compute it cannot avoid. A
torch.profiler op table of one epoch follows.

    .venv/bin/python -m benchmarks.profile_prefix_step [--pairs 24] [--batch 4] [--quick] [--table 15]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from benchmarks.bench_prefix_cache import epoch, protpeft_model, setup


class Clock:
    """Wall and CPU seconds per phase."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self._at = (0.0, 0.0)

    def start(self) -> None:
        self._at = (time.perf_counter(), time.process_time())

    def tick(self, phase: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.wall[phase] += wall - self._at[0]
        self.cpu[phase] += cpu - self._at[1]
        self._at = (wall, cpu)


def timed_step(engine, collate, examples: list, clock: Clock) -> None:
    """One training step as the loop makes it (``_loss``, ``engine.backward``, ``engine.step``), phase by phase;
    the cache lookup is timed inside the forward and subtracted from it."""
    from protpeft.trainer.loop import _loss

    cache_lookup = engine.model.encoder.lookup
    spent = [0.0, 0.0]

    def lookup(keys, compute):
        wall, cpu = time.perf_counter(), time.process_time()
        states = cache_lookup(keys, compute)
        spent[0] += time.perf_counter() - wall
        spent[1] += time.process_time() - cpu
        return states

    engine.model.encoder.lookup = lookup
    try:
        clock.start()
        batch = collate(examples)
        clock.tick("collate")
        loss = _loss(engine, batch)
        clock.tick("forward")
        engine.backward(loss, True)
        clock.tick("backward")
        engine.step()
        clock.tick("optimizer")
    finally:
        engine.model.encoder.lookup = cache_lookup
    clock.wall["forward"] -= spent[0]
    clock.cpu["forward"] -= spent[1]
    clock.wall["cache lookup"] += spent[0]
    clock.cpu["cache lookup"] += spent[1]


def bare_suffix(engine, collate, examples: list, clock: Clock) -> tuple[int, int]:
    """The suffix alone on the calls the encoder makes, forward + backward of a sum; (tokens computed, real)."""
    encoder = engine.model.encoder
    inputs = collate(examples)["inputs"]
    tokens = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    calls = [(encoder.cached_input(**call), call["attention_mask"])
             for call in engine.model.call_inputs(len(examples), tokens)]  # fmt: skip
    clock.start()
    total = sum(encoder.suffix(inputs_embeds=h, attention_mask=m).last_hidden_state.sum() for h, m in calls)
    total.backward()
    clock.tick("bare suffix fwd+bwd")
    engine.optimizer.zero_grad(set_to_none=True)
    return sum(m.numel() for _, m in calls), int(inputs["attention_mask"].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1, help="timed epochs")
    parser.add_argument("--table", type=int, default=15, help="rows of the op table (0: none)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="profile-prefix-"))
    try:
        cfg, data, tokens = setup(args, work)
        engine, collate, fill = protpeft_model(cfg, data, tokens, cache=True)
        examples = data.splits["train"]
        batches = [[examples[i] for i in b] for b in epoch(data, tokens, args.batch, 1)]
        clock, computed, real = Clock(), 0, 0
        timed_step(engine, collate, batches[0], Clock())  # warm-up
        for _ in range(args.repeats):
            for b in batches:
                timed_step(engine, collate, b, clock)
                tokens_computed, tokens_real = bare_suffix(engine, collate, b, clock)
                computed, real = computed + tokens_computed, real + tokens_real
        steps = len(batches) * args.repeats
        print(f"fill {fill:.1f} s; {steps} steps; suffix tokens computed {computed / steps:.0f} per step, "
              f"{1 - real / computed:.1%} padding; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
        wall = sum(v for k, v in clock.wall.items() if not k.startswith("bare"))
        cpu = sum(v for k, v in clock.cpu.items() if not k.startswith("bare"))
        print(f"{wall / steps * 1e3:.0f} ms per step (wall), {cpu / steps * 1e3:.0f} ms (CPU)")
        for phase in clock.wall:
            share = clock.wall[phase] / wall
            print(f"  {phase:22s} wall {clock.wall[phase] / steps * 1e3:8.1f} ms {share:6.1%}"
                  f"   cpu {clock.cpu[phase] / steps * 1e3:8.1f} ms")  # fmt: skip
        bare_wall, bare_cpu = clock.wall["bare suffix fwd+bwd"], clock.cpu["bare suffix fwd+bwd"]
        print(f"  step / bare suffix: {wall / bare_wall:.3f} (wall), {cpu / bare_cpu:.3f} (CPU)")
        if args.table:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                for b in batches:
                    timed_step(engine, collate, b, Clock())
            print(f"\ntorch.profiler, one epoch ({len(batches)} steps)")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.table))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
