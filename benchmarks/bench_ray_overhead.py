"""What Ray Train costs: training throughput through Ray Train (1 worker) vs ``run_training`` in this process on
the same model, data and steps; and Ray Train with 1 vs 2 workers (same per-worker batch, so 2 workers process a
twice larger global batch per step).

Two figures per run:
- steady-state throughput: training examples/s measured inside the loop (the first logging window, which holds
  warm-up, is left out), the cost of Ray's process group and data-parallel gradient all-reduce;
- end-to-end wall time: from the call to the returned summary, including Ray's start-up and teardown of the
  worker group (the in-process run has none), the fixed cost a short run pays.

The in-process run uses one intra-op thread, as a 1-CPU Ray worker does (Ray sets OMP_NUM_THREADS=1).

    .venv/bin/python -m benchmarks.bench_ray_overhead [--steps 30] [--batch 4] [--mode lora] [--preset tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import random_esm2, write_results
from protpeft.config import load_config
from protpeft.data.synth import write_synthetic


def steady_throughput(run_dir: Path) -> float:
    """Median examples/s over the logging windows after the first."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["examples_per_s"] for r in records if "examples_per_s" in r][1:]
    return statistics.median(rates) if rates else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4, help="examples per worker per step")
    parser.add_argument("--mode", default="lora", choices=["lora", "frozen", "full"])
    parser.add_argument("--preset", default="esm2_t6_8M_UR50D", help="random ESM-2 architecture, or 'tiny'")
    args = parser.parse_args()

    from protpeft.trainer.ray_cluster import connect
    from protpeft.trainer.ray_launch import launch_training
    from protpeft.trainer.run import run_training

    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    if args.preset == "tiny":
        from protpeft.models.backbone import init_tiny

        model = init_tiny(work / "tiny")
    else:
        model = random_esm2(args.preset)
    data = write_synthetic("ppi", work / "ppi")
    log_every = max(1, args.steps // 6)

    def config(name: str, *extra: str):
        return load_config(
            None,
            [
                f"name={name}",
                f"output_dir={work / 'runs'}",
                f"model.base={model}",
                f"mode={args.mode}",
                f"data.pairs={data['pairs']}",
                f"data.sequences={data['sequences']}",
                f"data.cache_dir={work / 'cache'}",
                f"optim.batch_size={args.batch}",
                "optim.grad_accum=1",
                f"optim.max_steps={args.steps}",
                f"engine.log_every={log_every}",
                f"engine.eval_every={args.steps}",
                "tracking.mlflow=false",
                *extra,
            ],
        )

    rows = []
    load_before = os.getloadavg()[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    local = run_training(config("in-process", "engine.strategy=local"))
    rows.append(
        {
            "run": "in-process (no Ray)",
            "workers": 1,
            "global_batch": args.batch,
            "examples_per_s": steady_throughput(local.run_dir),
            "wall_s": time.perf_counter() - started,
            "train_s": local.seconds,
        }
    )
    torch.set_num_threads(threads)

    connect(num_cpus=2)
    for workers in (1, 2):
        started = time.perf_counter()
        summary = launch_training(config(f"ray-{workers}w", f"engine.workers={workers}"))
        rows.append(
            {
                "run": f"Ray Train, {workers} worker{'s' * (workers > 1)}",
                "workers": workers,
                "global_batch": args.batch * workers,
                "examples_per_s": steady_throughput(Path(summary["run_dir"])),
                "wall_s": time.perf_counter() - started,
                "train_s": summary["seconds"],
            }
        )

    bare, one, two = rows
    notes = {
        "model": f"{args.preset} (random weights), mode {args.mode}, {args.steps} steps, batch {args.batch}/worker",
        "throughput ratio in-process / Ray 1 worker": bare["examples_per_s"] / one["examples_per_s"],
        "end-to-end ratio Ray 1 worker / in-process": one["wall_s"] / bare["wall_s"],
        "Ray fixed cost per run (s)": one["wall_s"] - one["train_s"],
        "scaling 2 workers / 1 worker (examples/s)": two["examples_per_s"] / one["examples_per_s"],
        "machine": f"{os.cpu_count()} cores; in-process run pinned to 1 intra-op thread, Ray workers 1 CPU each "
        "(OMP_NUM_THREADS=1) on a local instance with 2 CPUs",
        "load average before / after (1 min)": f"{load_before:.1f} / {os.getloadavg()[0]:.1f}",
    }
    write_results("ray_overhead", rows, notes)


if __name__ == "__main__":
    main()
