"""Training throughput against the loop a user would write: the plain transformers + peft loop
(``benchmarks/peer_loop.py``) vs protpeft ``--local`` vs protpeft through Ray Train with 1 worker.

Same random-weight ESM-2 shapes (8M: 6 layers, hidden 320; 35M: 12 layers, hidden 480), dropout 0 on both sides,
8 pairs x 256 tokens per step (every protein distinct and exactly 256 tokens: no padding, no repeated protein, so
neither side is helped by its batching), AdamW, the same threads. LoRA: r 8, alpha 32, key+value of the last 8
layers (protpeft's defaults). protpeft keeps its own defaults otherwise (gradient clipping 0.2, cosine schedule).

Each side runs in its own process (children of this one); Ray's worker gets its threads from Ray
(``engine.cpus_per_worker=auto``, no ``OMP_NUM_THREADS`` inherited). The sides run in lock-step, one step of one side
at a time, the order rotating every step (loop 1, local 1, Ray 1, local 2, Ray 2, loop 2, Ray 3, ...: no side
always runs right after the same other one; a :class:`Gate` file handshake, through
protpeft's metric logger on its side, in Ray's worker itself: see :func:`gated_worker`), so load from outside the
benchmark is spread over all of them. Figures:

- full, LoRA: steady-state tokens/s, the best step after the first (the loop times its steps; protpeft logs one window
  per step, ``examples_per_s`` in ``metrics.jsonl``);
- frozen: tokens/s over a whole epoch with each protein seen once, protpeft's whole run (load, embedding cache fill,
  head training, evaluation; minus the time it waited at the gate) against the loop's steps alone; and the steady
  state once the cache is filled
  (epoch 2+: head only, vs the loop's backbone forward every step);
- Ray's start-up apart: launch to summary minus the run's own seconds (the in-worker training);
- peak RSS of each side's process (Ray: its worker), and for the two in-process sides its growth over the process's
  RSS before the model was built (imports differ between the sides). glibc keeps freed blocks cached, so these
  depend on each process's allocation history; ``--live-memory`` measures the peaks with every large block returned
  when freed (see :data:`LIVE_MEMORY_ENV`), which is what the tensors held.

    .venv/bin/python -m benchmarks.bench_vs_loop [--shapes 8M 35M] [--modes full lora frozen] [--steps 5] [--quick]
    .venv/bin/python -m benchmarks.bench_vs_loop --live-memory --steps 3   # peaks only (full, LoRA)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import ROOT, random_esm2, write_results
from benchmarks.lockstep import Gate, GateLogger, peak_rss_mb, rss_mb

SHAPES = {"8M": "esm2_t6_8M_UR50D", "35M": "esm2_t12_35M_UR50D", "tiny": "tiny"}
PAIRS, TOKENS, WARMUP = 8, 256, 1
LETTERS = "ACDEFGHIKLMNPQRSTVWY"
SIDES = ("loop", "local", "ray")


# --------------------------------------------------------------------------------------------------------------
# data and the sides (each in its own process)


def write_data(out: Path, train_pairs: int, seed: int = 0) -> dict[str, Path]:
    """``train_pairs`` pairs of distinct random proteins of TOKENS - 2 residues (gold layout, split column); val and
    test are 8 pairs each of training proteins (nothing new to embed, little to evaluate)."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    names = [f"P{i:05d}" for i in range(2 * train_pairs)]
    fasta = "".join(f">{n}\n{''.join(rng.choices(LETTERS, k=TOKENS - 2))}\n" for n in names)
    rows = [(names[2 * i], names[2 * i + 1], i % 2, "train") for i in range(train_pairs)]
    for split in ("val", "test"):
        rows += [(*rng.sample(names, 2), i % 2, split) for i in range(PAIRS)]
    (out / "sequences.fasta").write_text(fasta)
    (out / "pairs.tsv").write_text("p0\tp1\tlabel\tsplit\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return {"pairs": out / "pairs.tsv", "sequences": out / "sequences.fasta"}


def run_loop(model: str, data: Path, mode: str, steps: int, gate: Gate) -> dict:
    from benchmarks.peer_loop import PeerLoop

    sequences: dict[str, str] = {}
    lines = (data / "sequences.fasta").read_text().split()
    for name, seq in zip(lines[::2], lines[1::2], strict=True):
        sequences[name[1:]] = seq
    rows = [line.split("\t") for line in (data / "pairs.tsv").read_text().splitlines()[1:]]
    train = [r for r in rows if r[3] == "train"]
    random.Random(0).shuffle(train)
    base = rss_mb()
    loop = PeerLoop(model, mode)
    times = []
    gate.wait(1)
    for step in range(1, steps + 1):
        batch = train[(step - 1) * PAIRS : step * PAIRS]
        a, b = [sequences[r[0]] for r in batch], [sequences[r[1]] for r in batch]
        times.append(loop.step(a, b, [float(r[2]) for r in batch]))
        gate.done(step)
    return {"step_s": times, "peak_mb": peak_rss_mb(), "base_mb": base}


def protpeft_config(model: str, data: Path, mode: str, steps: int, work: Path, name: str):
    from protpeft.config import load_config

    return load_config(
        None,
        [
            f"name={name}",
            f"output_dir={work / 'runs'}",
            f"model.base={model}",
            f"mode={mode}",
            f"data.pairs={data / 'pairs.tsv'}",
            f"data.sequences={data / 'sequences.fasta'}",
            f"data.cache_dir={work / 'cache'}",
            "data.split.method=column",
            f"optim.batch_size={PAIRS}",
            "optim.grad_accum=1",
            "optim.lr=1e-4",
            f"optim.max_steps={steps}",
            "engine.log_every=1",
            f"engine.eval_every={steps}",
            "lora.dropout=0",
            "lora.last_layers=8",
            "model.head_dropout=0",
            "tracking.mlflow=false",
        ],
    )


def windows(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["examples_per_s"] for r in records if "examples_per_s" in r]


def run_protpeft(side: str, model: str, data: Path, mode: str, steps: int, gate: GateLogger) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"bench-vs-loop-{side}-"))
    cfg = protpeft_config(model, data, mode, steps, work, f"{side}-{mode}")
    if side == "local":
        from protpeft.trainer.run import run_training

        base = rss_mb()
        result = run_training(cfg, logger=gate)
        return {
            "examples_per_s": windows(result.run_dir),
            "seconds": result.seconds - gate.gate.blocked,
            "peak_mb": result.peak_memory_mb,
            "base_mb": base,
            "strategy": result.strategy,
        }
    from protpeft.trainer.ray_cluster import connect
    from protpeft.trainer.ray_launch import launch_training

    started = time.perf_counter()
    connect(num_cpus=torch.get_num_threads())
    summary = launch_training(cfg, worker=functools.partial(gated_worker, gate=gate))
    wall = time.perf_counter() - started
    blocked = json.loads((Path(gate.gate.directory) / f"ray-done-{steps}").read_text())["blocked"]
    return {
        "examples_per_s": windows(Path(summary["run_dir"])),
        "seconds": summary["seconds"] - blocked,
        "wall_s": wall - blocked,
        "peak_mb": summary["peak_memory_mb"],
        "strategy": summary["strategy"],
        "cpus_per_worker": json.loads((Path(summary["run_dir"]) / "protpeft.json").read_text())["config"]["engine"][
            "cpus_per_worker"
        ],
    }


def gated_worker(config: dict, gate: GateLogger) -> None:
    """protpeft's Ray Train worker with the gate on its rank 0, in the worker itself. (Not on the driver's side, where
    protpeft's logger runs: that sees a step only when Ray's controller polls its report, and Ray's result queue holds
    one report, so a gate there blocks the worker's next report while the other sides step, and their steps would be
    counted in this side's step time.)"""
    from protpeft.trainer import ray_worker

    ray_worker.train_worker(config, watcher=gate)


def run_side(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    if args.side == "loop":
        out = run_loop(args.model, Path(args.data), args.mode, args.steps, Gate(args.gate, "loop", args.steps))
    else:
        gate = GateLogger(args.gate, args.side, args.steps)
        out = run_protpeft(args.side, args.model, Path(args.data), args.mode, args.steps, gate)
    Path(args.result).write_text(json.dumps(out))


def run_sides(
    sides: list[str], model: Path, data: Path, mode: str, steps: int, threads: int, env_extra: dict | None = None
) -> dict[str, dict]:
    """Every side in its own child process, in lock-step (see the module docstring). Ray's child gets no
    OMP_NUM_THREADS, so its worker's threads are Ray's."""
    gate = Path(tempfile.mkdtemp(prefix="bench-gate-"))
    children = {}
    for side in sides:
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | (env_extra or {})
        if side != "ray":
            env["OMP_NUM_THREADS"] = str(threads)
        command = [sys.executable, "-m", "benchmarks.bench_vs_loop", "--side", side, "--model", str(model)]
        command += ["--data", str(data), "--mode", mode, "--steps", str(steps), "--threads", str(threads)]
        command += ["--gate", str(gate), "--result", str(gate / f"{side}.json")]
        children[side] = subprocess.Popen(command, cwd=ROOT, env=env)

    def wait_for(side: str, name: str) -> None:
        while not (gate / f"{side}-{name}").exists():
            if children[side].poll() is not None:
                raise SystemExit(f"the {side} side exited ({children[side].returncode}) before {name}")
            time.sleep(0.005)

    for side in sides:
        wait_for(side, "ready")  # imports, Ray start-up: before any timed work
    for step in range(1, steps + 1):
        turn = (step - 1) % len(sides)  # each step another side goes first: no side always follows the same one
        for side in sides[turn:] + sides[:turn]:
            (gate / f"{side}-go-{step}").touch()
            wait_for(side, f"done-{step}")
    for side, child in children.items():
        if child.wait() != 0:
            raise SystemExit(f"the {side} side failed ({child.returncode})")
    return {side: json.loads((gate / f"{side}.json").read_text()) for side in sides}


# --------------------------------------------------------------------------------------------------------------
# figures


def tokens_per_s(side: str, out: dict, mode: str, steps: int, epoch: bool) -> float:
    """Steady state (best step after the warm-up), or for ``epoch`` the whole epoch (see the module docstring)."""
    per_step = PAIRS * 2 * TOKENS
    if side == "loop":
        times = out["step_s"] if epoch else out["step_s"][WARMUP:]
        return per_step * len(times) / sum(times) if epoch else per_step / min(times)
    if epoch:
        return per_step * steps / out["seconds"]
    return max(out["examples_per_s"][WARMUP:]) * 2 * TOKENS


LIVE_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
"""``--live-memory``: glibc maps every block over 128 KiB on its own and unmaps it when freed (a fixed threshold also
stops glibc from raising it as large blocks are freed), so a process's peak RSS is the memory its tensors held at the
worst moment, not what the allocator kept cached from earlier steps. Steps run about 2x slower this way: speed is not
reported."""


def live_memory_rows(shape: str, mode: str, results: dict[str, dict]) -> list[dict]:
    row = {"shape": shape, "mode": mode, "measure": "live peak RSS"}
    row.update({f"{side}_peak_mb": out["peak_mb"] for side, out in results.items()})
    row.update({f"{side}/loop": out["peak_mb"] / results["loop"]["peak_mb"] for side, out in results.items()
                if side != "loop"})  # fmt: skip
    return [row]


def rows_for(shape: str, mode: str, results: dict[str, dict], steps: int) -> list[dict]:
    frozen = [("epoch 1 (cache fill)", True), ("epoch 2+ (cache)", False)]
    measures = frozen if mode == "frozen" else [("steady", False)]
    rows = []
    for measure, epoch in measures:
        rates = {side: tokens_per_s(side, out, mode, steps, epoch) for side, out in results.items()}
        row = {"shape": shape, "mode": mode, "measure": measure}
        row.update({f"{side}_tok_s": rate for side, rate in rates.items()})
        row.update({f"{side}/loop": rates[side] / rates["loop"] for side in rates if side != "loop"})
        if "ray" in results:
            row["ray_startup_s"] = results["ray"]["wall_s"] - results["ray"]["seconds"]
        row.update({f"{side}_peak_mb": out["peak_mb"] for side, out in results.items()})
        for side in ("loop", "local"):
            if side in results:
                row[f"{side}_growth_mb"] = results[side]["peak_mb"] - results[side]["base_mb"]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["8M", "35M"], choices=list(SHAPES))
    parser.add_argument("--modes", nargs="+", default=["full", "lora", "frozen"], choices=["full", "lora", "frozen"])
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=list(SIDES))
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per run; the first is warm-up")
    parser.add_argument("--frozen-steps", type=int, default=12, help="steps of a frozen run (cheap steps)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke test: the tiny shape, LoRA, loop and --local")
    parser.add_argument("--name", default="vs_loop", help="results file name under benchmarks/results/")
    parser.add_argument(
        "--live-memory", action="store_true", help="peak memory only, glibc returning large freed blocks at once"
    )
    # one side in a child process (used by the benchmark itself)
    parser.add_argument("--side", choices=list(SIDES), help=argparse.SUPPRESS)
    for hidden in ("--model", "--data", "--mode", "--gate", "--result"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        run_side(args)
        return
    if args.quick:
        args.shapes, args.modes, args.sides = ["tiny"], ["lora"], ["loop", "local"]
        args.steps = args.frozen_steps = 3
        args.name = f"{args.name}_quick"
    if args.live_memory:
        args.modes = [m for m in args.modes if m != "frozen"]
        args.name = f"{args.name}_live_memory" if args.name == "vs_loop" else args.name
    if "loop" not in args.sides:
        parser.error("--sides must include loop (the ratios are against it)")

    work = Path(tempfile.mkdtemp(prefix="bench-vs-loop-"))
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    rows = []
    for shape in args.shapes:
        preset = SHAPES[shape]
        if preset == "tiny":
            from protpeft.models.backbone import init_tiny

            model = init_tiny(work / "tiny")
        else:
            model = random_esm2(preset)
        for mode in args.modes:
            steps = args.frozen_steps if mode == "frozen" else args.steps
            data = write_data(work / f"data-{steps}", steps * PAIRS)["pairs"].parent
            if args.live_memory:
                results = run_sides(args.sides, model, data, mode, steps, args.threads, LIVE_MEMORY_ENV)
                rows += live_memory_rows(shape, mode, results)
            else:
                results = run_sides(args.sides, model, data, mode, steps, args.threads)
                rows += rows_for(shape, mode, results, steps)
            print(json.dumps(rows[-1]), flush=True)
    notes = {
        "setting": f"{PAIRS} pairs x {TOKENS} tokens per step (distinct proteins, no padding), AdamW, dropout 0, "
        f"{args.threads} threads per side, random-weight ESM-2 shapes; LoRA r8 alpha32 key+value last 8 layers",
        "steady": f"best step of {args.steps - WARMUP} after {WARMUP} warm-up step(s); frozen runs "
        f"{args.frozen_steps} steps",
        "frozen epoch 1": "protpeft's whole run (load, cache fill, head steps, val+test) vs the loop's steps alone",
        "ray_startup_s": "launch_training call to summary, minus the in-worker run seconds and gate waits (ray.init "
        "included; it overlaps the other sides' start-up)",
        "peak_mb": "peak RSS of the side's process (ray: its training worker); growth: over RSS before the model",
        "strategy": {side: results[side].get("strategy", "plain loop") for side in results},
        "ray cpus_per_worker": results.get("ray", {}).get("cpus_per_worker"),
        "total_s": round(time.perf_counter() - started, 1),
        "live memory": f"glibc {LIVE_MEMORY_ENV} in every side" if args.live_memory else "off",
        "load average before / after (1 min)": f"{load_before:.1f} / {os.getloadavg()[0]:.1f}",
    }
    write_results(args.name, rows, notes)


if __name__ == "__main__":
    main()
