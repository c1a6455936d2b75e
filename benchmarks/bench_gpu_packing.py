"""Fractional-GPU packing: N LoRA jobs on one GPU at 1/N of it each against the same N jobs at a whole GPU each.

Both ways go through ``run-many`` on one local Ray instance, as a user runs them: ``resources: {GPU: 1/N}`` lets Ray
place all N jobs' workers on the card at once; ``{GPU: 1}`` makes Ray's queue run them one after another. Reported:
the wall time of all N jobs, each job's own seconds and peak GPU memory, how many jobs trained at the same time
(from the times in their ``metrics.jsonl``), and the packed way's speed-up. Model: a random ESM-2 of a real
architecture (``--preset``), LoRA with the paper's defaults, the prefix cache on (each way starts with an empty one,
which its jobs share); data: ``--pairs`` E. coli D-SCRIPT pairs (a seeded sample), split 80/10/10.

    python -m benchmarks.bench_gpu_packing [--jobs 4] [--steps 60] [--preset esm2_t30_150M_UR50D] [--smoke]

``--smoke`` runs the same on a CPU with CPUs as the shared resource (the tiny model, 2 jobs at half the cores or
all of them each): the script's own path, not the GPU's (a worker that asks Ray for a GPU gets an NCCL group, which
a machine without one cannot start).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ecoli_or_exit, random_esm2, write_results


def overlap(run_dirs: list[Path]) -> int:
    """The most jobs that were between their first and last ``metrics.jsonl`` record at one moment."""
    events = []
    for run_dir in run_dirs:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        times = [json.loads(line)["time"] for line in lines if line.strip()]
        events += [(min(times), 1), (max(times), -1)]
    most = now = 0
    for _, change in sorted(events, key=lambda e: (e[0], e[1])):  # an end before a start at the same time
        now += change
        most = max(most, now)
    return most


def one_way(args: argparse.Namespace, work: Path, name: str, share: float, common: list[str]) -> dict:
    """All jobs at once, each asking for ``share`` of the GPU (``--smoke``: of the machine's CPUs)."""
    from protpeft.trainer.run_many import run_many

    resources = {"CPU": max(1, int(share * args.cpus))} if args.smoke else {"GPU": share}
    spec = {
        "output": str(work / name),
        "set": [*common, f"output_dir={work / name}", f"data.cache_dir={work / name / 'cache'}"],
        "jobs": [
            {"name": f"{name}-{i}", "set": [f"optim.seed={i}"], "resources": resources} for i in range(args.jobs)
        ],
    }
    start = time.perf_counter()
    rows = run_many(spec)
    wall = time.perf_counter() - start
    failed = [r["job"] for r in rows if r["state"] != "FINISHED"]
    if failed:
        raise SystemExit(f"{name}: jobs {failed} did not finish: {[r['error'] for r in rows if r['error']]}")
    return {
        "way": f"{args.jobs} jobs at {resources}",
        "wall_s": wall,
        "job_seconds": [round(r["seconds"], 1) for r in rows],
        "peak_memory_mb": [round(r["peak_memory_mb"] or 0) for r in rows],
        "most_at_once": overlap([Path(r["run_dir"]) for r in rows]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=4, help="LoRA jobs per way (the packed way gives each 1/jobs GPU)")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per job")
    parser.add_argument("--pairs", type=int, default=600, help="E. coli pairs used (80 %% of them to train)")
    parser.add_argument("--preset", default="esm2_t30_150M_UR50D", help="ESM-2 architecture (random weights)")
    parser.add_argument("--smoke", action="store_true", help="on a CPU: tiny model, 2 jobs sharing the CPUs")
    args = parser.parse_args()
    import torch

    args.cpus = max(os.cpu_count() or 1, args.jobs)  # the local Ray instance's: a CPU for each job's worker
    if args.smoke:
        args.jobs, args.steps, args.pairs, args.preset, args.cpus = 2, 4, 120, "tiny", 2
    elif not torch.cuda.is_available():
        raise SystemExit("skipped: no CUDA device (--smoke runs the scheduling on a CPU)")
    data = ecoli_or_exit()
    work = Path(tempfile.mkdtemp(prefix="bench-packing-"))
    try:
        pairs = work / "pairs.tsv"
        lines = (data / "ecoli_test.tsv").read_text().splitlines(keepends=True)  # positives first: a seeded sample
        pairs.write_text("".join(random.Random(0).sample(lines, min(args.pairs, len(lines)))))
        if args.preset == "tiny":
            from protpeft.models.backbone import init_tiny

            model = init_tiny(work / "model")
        else:
            model = random_esm2(args.preset)
        common = [
            f"model.base={model}",
            f"data.pairs={pairs}",
            f"data.sequences={data / 'ecoli.fasta'}",
            "data.split.method=random",
            "mode=lora",
            "optim.batch_size=4",
            "optim.grad_accum=1",
            f"optim.max_steps={args.steps}",
            "engine.workers=1",
            "engine.log_every=5",
            "tracking.mlflow=false",
        ]
        from protpeft.trainer.ray_cluster import connect

        connect(num_cpus=args.cpus, dashboard=False)  # the lent GPU machine lacks the dashboard's packages
        whole = one_way(args, work, "whole", 1.0, common)
        packed = one_way(args, work, "packed", 1.0 / args.jobs, common)
        speedup = whole["wall_s"] / packed["wall_s"]
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none (--smoke: CPUs shared instead)"
        notes = {
            "packed_speedup": speedup,
            "model": f"{args.preset} architecture, random weights, LoRA (paper defaults), prefix cache on",
            "data": f"{args.pairs} E. coli D-SCRIPT pairs (seeded sample), 80/10/10 random split, batch 4, "
            f"{args.steps} steps",
            "gpu": gpu,
            "command": " ".join(["python -m benchmarks.bench_gpu_packing", *sys.argv[1:]]),
        }
        write_results("gpu_packing" + ("_smoke" if args.smoke else ""), [whole, packed], notes)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
