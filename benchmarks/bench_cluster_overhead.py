"""What a shared-nothing cluster costs one run: the same LoRA run (the tiny demo model, synthetic PPI data, a few dozen
steps, 2 workers) as ``protpeft train`` on the cluster of tests/cluster/local_cluster.py — a head with no CPUs and two
1-CPU worker nodes in mount namespaces of their own that see none of the driver's files, storage on a SeaweedFS S3
server — and on one node, storage a local directory, in two ways: a new local Ray instance (what ``protpeft train``
without ``--address`` starts and stops), and a one-node Ray cluster already running (2 CPUs, joined with
``--address``), which like the cluster costs the run no start-up.

What the cluster adds to a run: the base model staged into S3 and copied onto each node, the data through Ray's object
store to another node, checkpoints and the artefact written to S3 and the artefact copied back, the all-reduce
between nodes (over loopback here: no network is measured). Two figures per run:
- end-to-end wall time of the command, as a user waits for it;
- steady-state steps/s: the median over the training log windows after the first (rank 0's examples/s over its
  per-step batch), i.e. the training loop itself, checkpoint windows mostly left out.

Rounds rotate the order of the sides so drifting load on the shared machine falls on all of them; all three Ray
instances stay up throughout (the idle ones cost every side the same). Needs mount namespaces (root), as the cluster
tests do.

    .venv/bin/python -m benchmarks.bench_cluster_overhead [--steps 36] [--rounds 3] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, write_results

CLUSTER_CODE = ROOT / "tests" / "cluster"
NEW_RAY, RUNNING_RAY, CLUSTER = "one node, new Ray", "one node, Ray running", "cluster"
SIDES = (NEW_RAY, RUNNING_RAY, CLUSTER)
SLUGS = {NEW_RAY: "new-ray", RUNNING_RAY: "running-ray", CLUSTER: "cluster"}


def steady_steps_per_s(run_dir: Path, batch: int) -> float:
    """Median optimizer steps/s over the logging windows after the first (one micro-batch of ``batch`` per step)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["examples_per_s"] / batch for r in records if "examples_per_s" in r][1:]
    return statistics.median(rates) if rates else float("nan")


def write_config(work: Path, model: Path, data: dict[str, Path], args: argparse.Namespace) -> Path:
    import yaml

    config = {
        "task": "ppi",
        "mode": "lora",
        "model": {"base": str(model)},
        "data": {"pairs": str(data["pairs"]), "sequences": str(data["sequences"])},
        "optim": {"batch_size": args.batch, "grad_accum": 1, "max_steps": args.steps, "epochs": 100},
        "engine": {
            "workers": 2,
            "log_every": max(1, args.steps // 9),
            "eval_every": args.steps,
            "checkpoint_every": max(1, args.steps // 3),
        },
        "tracking": {"mlflow": False},
    }
    path = work / "lora.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train(config: Path, name: str, work: Path, extra: list[str], env: dict[str, str], batch: int) -> dict[str, Any]:
    """``protpeft train`` as a user runs it; wall time, the run's own training time and its steady steps/s."""
    command = [sys.executable, "-m", "protpeft", "train", str(config), "--set", f"name={name}",
               "--set", f"output_dir={work / 'runs'}", *extra]  # fmt: skip
    log = work / f"{name}.log"
    started = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=900)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{log.read_text()[-3000:]}")
    run_dir = work / "runs" / name
    artifact = json.loads((run_dir / "protpeft.json").read_text())
    return {"wall_s": wall, "train_s": artifact["seconds"], "steps_per_s": steady_steps_per_s(run_dir, batch),
            "steps": artifact["steps"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=36, help="optimizer steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per side; each round starts with another side")
    parser.add_argument("--batch", type=int, default=4, help="examples per worker per step")
    args = parser.parse_args()

    sys.path.insert(0, str(CLUSTER_CODE))
    from local_cluster import PORTS_PER_NODE, default_root, start_cluster
    from processes import PortBlock
    from ray_nodes import namespace_probe, node_env, start_head, wait_head

    from protpeft.data.synth import write_synthetic
    from protpeft.models.backbone import init_tiny

    refused = namespace_probe()
    if refused:
        raise SystemExit(f"skipped: {refused}")
    load_before = os.getloadavg()[0]
    base_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith(("AWS_", "RAY_AUTH"))}
    one_root, token = default_root(), secrets.token_hex(32)
    one = start_head(one_root, PortBlock(PORTS_PER_NODE), node_env(dict(os.environ), token), num_cpus=2)
    cluster = None
    try:
        wait_head(one, token)
        cluster = start_cluster()
        work = cluster.driver_dir / "bench"  # on the driver's side only: no worker node can read it
        work.mkdir(parents=True)
        model = init_tiny(work / "tiny-esm2")
        config = write_config(work, model, write_synthetic("ppi", work / "ppi"), args)
        local = ["--storage", str(work / "local-store")]
        sides = {
            NEW_RAY: (local, base_env),
            RUNNING_RAY: ([*local, "--address", f"127.0.0.1:{one.ports['port']}"],
                          {**base_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}),
            CLUSTER: (["--address", cluster.gcs_address, "--storage", f"s3://{cluster.bucket}/bench-{uuid.uuid4().hex[:6]}"],
                      {**base_env, **cluster.env()}),
        }  # fmt: skip
        rows = []
        for round_ in range(args.rounds):
            names = list(sides)
            for side in names[round_ % 3 :] + names[: round_ % 3]:
                extra, env = sides[side]
                name = f"{SLUGS[side]}-{round_ + 1}"
                measured = train(config, name, work, extra, env, args.batch)
                rows.append({"side": side, "round": round_ + 1, **measured})
                print(f"{side}, round {round_ + 1}: {measured}", flush=True)
    finally:
        if cluster is not None:
            cluster.stop()
        one.group.stop()
        shutil.rmtree(one_root, ignore_errors=True)

    def median(side: str, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["side"] == side)

    def fixed(side: str) -> float:
        """What a run costs besides its training loop: start-up, staging, teardown, bringing the artefact back."""
        return statistics.median(r["wall_s"] - r["train_s"] for r in rows if r["side"] == side)

    def ratios(key: str) -> str:
        return ", ".join(f"{median(CLUSTER, key) / median(side, key):.2f}" for side in (NEW_RAY, RUNNING_RAY))

    def per_side(what) -> str:
        return " / ".join(f"{what(side):.2f}" for side in SIDES)

    notes = {
        "run": f"LoRA on the tiny ESM-2 (init-tiny), synthetic PPI (1200 pairs), {args.steps} steps, 2 workers x "
        f"batch {args.batch}, a checkpoint every {max(1, args.steps // 3)} steps, evaluation at the end, no MLflow",
        NEW_RAY: "protpeft train --workers 2 --storage DIR: starts (and stops) a local Ray instance with 2 CPUs",
        RUNNING_RAY: "protpeft train --workers 2 --address HEAD --storage DIR: a running one-node Ray with 2 CPUs",
        CLUSTER: "protpeft train --workers 2 --address HEAD --storage s3://...: head with 0 CPUs + 2 worker nodes "
        "(1 CPU each, private mount namespaces), SeaweedFS S3 on 127.0.0.1; data and base model only on the driver",
        "sides in the figures below": " / ".join(SIDES),
        "median wall s": per_side(lambda side: median(side, "wall_s")),
        "median steady steps/s": per_side(lambda side: median(side, "steps_per_s")),
        "median fixed cost per run (wall - train) s": per_side(fixed),
        "wall ratio cluster / one node (new Ray, running Ray)": ratios("wall_s"),
        "steps/s ratio cluster / one node (new Ray, running Ray)": ratios("steps_per_s"),
        "cluster start-up (not in any run)": cluster.timings,
        "machine": f"{os.cpu_count()} cores shared with other work",
        "load average before / after (1 min)": f"{load_before:.1f} / {os.getloadavg()[0]:.1f}",
    }
    write_results("cluster_overhead", rows, notes)


if __name__ == "__main__":
    main()
