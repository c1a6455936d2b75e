"""A LoRA hyperparameter search with the prefix cache vs without it, through the real ``protpeft tune`` command.

The same 4-trial search run twice as a user runs it (``python -m protpeft tune TUNE.yaml``, a subprocess that starts
its own local Ray instance): a grid of 2 learning rates x 2 LoRA ranks, 2 trials at a time, 1 CPU per trial, no
early stopping (ASHA off), the search's metric val_loss (always defined, unlike AUPR on a handful of pairs). Once with
``data.prefix_cache=auto`` (the default: layers below the lowest adapted one computed once per unique sequence, with
no grad, written to the on-disk cache and read by every trial) and once with ``data.prefix_cache=off`` (every step
and every evaluation of every trial runs all layers). Each search gets a fresh, empty cache (``PROTPEFT_CACHE`` of
the child set to a new directory, which Ray's workers inherit), its own experiment directory, MLflow off; the
``auto`` search runs first, so any warm-up (file cache, imports) favours the search without the cache.

Model: a random-initialised ESM-2 of a real architecture (``--preset``, default the 8M shape: 6 layers, hidden 320),
LoRA r (searched) on key + value of the last ``--lora-layers`` layers (default 2: the cache covers layers 0..3, 4
of the 6 layers' forward and none of the backward, which stops at layer 4 either way), fp32. Data: a seeded random
subset of ``--pairs`` E. coli D-SCRIPT pairs (seeded random 80/10/10 split), crop ``--crop``, ``--epochs`` epochs of
``--batch`` pairs per step; evaluation on val after each epoch, val + test at the end.

Figures per search: the wall time of the whole command (Ray start-up, 4 trials, their Ray Train start-up, trials.json;
the report is left out, ``--no-report``), the sum of the trials' own run times, the sum of the trials'
``prefix_forwards`` (sequences computed through encoder layer 0 — with the cache, filling and misses only; from
trials.json), the number of unique sequences of the subset, and each trial's final val loss. The cache is exact:
every trial's val loss must match between the two searches within 1e-4 (asserted after the results are written).
The machine's mean 1-min load average while each search ran is recorded beside its times: on a shared machine a
search that ran under another job's load is not comparable.

    .venv/bin/python -m benchmarks.bench_prefix_cache_tune [--pairs 96] [--epochs 2] [--preset esm2_t6_8M_UR50D]
        [--lora-layers 2] [--crop 512] [--batch 8] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import SHARED_DATA, ecoli_or_exit, random_esm2, write_results

LRS = (1e-3, 5e-3)
RANKS = (4, 16)
WAYS = ("auto", "off")  # this order: any warm-up helps the search without the cache
TOLERANCE = 1e-4
QUICK = {"preset": "tiny", "pairs": 24, "epochs": 1, "batch": 4, "crop": 256}


def write_subset(work: Path, pairs: int, seed: int) -> Path:
    """A seeded random sample of the E. coli pairs (D-SCRIPT layout: the file lists positives first)."""
    lines = [line for line in (ecoli_or_exit() / "ecoli_test.tsv").read_text().splitlines() if line.strip()]
    subset = random.Random(seed).sample(lines, min(pairs, len(lines)))
    path = work / "pairs.tsv"
    path.write_text("\n".join(subset) + "\n")
    return path


def unique_sequences(pairs: Path, model: Path, crop: int) -> tuple[int, int]:
    """(distinct sequences the subset names, distinct cropped token sequences = the prefix cache's keys)."""
    from protpeft.data.fasta import read_fasta
    from protpeft.data.tokens import TokenEncoder
    from protpeft.models.backbone import load_tokenizer

    fasta = read_fasta(SHARED_DATA / "ecoli.fasta")
    ids = {i for line in pairs.read_text().splitlines() for i in line.split()[:2]}
    sequences = {fasta[i] for i in ids}
    tokens = TokenEncoder(load_tokenizer(str(model)), crop)
    return len(sequences), len({tokens.encode(s).tobytes() for s in sequences})


def write_tune_file(where: Path, way: str, model: Path, pairs: Path, args: argparse.Namespace) -> Path:
    import yaml

    spec = {
        "config": {
            "task": "ppi",
            "mode": "lora",
            "model": {"base": str(model)},
            "data": {
                "pairs": str(pairs),
                "sequences": str(SHARED_DATA / "ecoli.fasta"),
                "split": {"method": "random"},
                "crop": args.crop,
                "prefix_cache": way,
            },
            "lora": {"last_layers": args.lora_layers},
            "optim": {"batch_size": args.batch, "grad_accum": 1, "epochs": args.epochs},
            "engine": {"checkpoint_metric": "val_loss", "checkpoint_mode": "min"},
            "tracking": {"mlflow": False},
        },
        "name": f"prefix-{way}",
        "storage": str(where / "runs"),
        "search": {"algorithm": "grid", "max_concurrent": 2, "metric": "val_loss", "mode": "min", "seed": 0},
        "asha": {"enabled": False},
        "resources": {"CPU": 1},
        "space": {"optim.lr": {"grid": list(LRS)}, "lora.r": {"grid": list(RANKS)}},
    }
    path = where / "tune.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_search(where: Path, tune_file: Path, timeout: float) -> tuple[float, float]:
    """``protpeft tune TUNE.yaml --no-report`` in a child process with its own cache and home: its wall time and the
    machine's mean 1-min load average while it ran (sampled every 5 s; the machine is shared)."""
    cache = where / "cache"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env |= {"PROTPEFT_CACHE": str(cache), "PROTPEFT_HOME": str(where / "home"), "MLFLOW_DISABLE_TELEMETRY": "true"}
    command = [sys.executable, "-m", "protpeft", "tune", str(tune_file), "--no-report"]
    log = where / "tune.log"
    started = time.perf_counter()
    loads: list[float] = []
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=where, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        while True:
            try:
                code = process.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                loads.append(os.getloadavg()[0])
                if time.perf_counter() - started < timeout:
                    continue
            process.send_signal(signal.SIGINT)  # past the timeout: protpeft's own interruption stops trials and Ray
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # the group of the child started here, nothing else
                process.wait(timeout=30)
            raise SystemExit(f"{tune_file} ran past {timeout:.0f} s:\n{log.read_text()[-4000:]}")
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{tune_file} failed ({code}):\n{log.read_text()[-4000:]}")
    return wall, sum(loads) / len(loads) if loads else os.getloadavg()[0]


def trial_rows(experiment: Path) -> list[dict[str, Any]]:
    """The 4 trials of trials.json, by (lr, rank): val loss, prefix forwards, own seconds, steps, filled."""
    data = json.loads((experiment / "trials.json").read_text())
    rows = []
    for trial in data["trials"]:
        if trial["state"] != "FINISHED":
            raise SystemExit(f"{experiment}: trial {trial['trial_id']} {trial['state']}: {trial.get('error')}")
        forwards = trial["prefix_forwards"]
        if forwards is None:  # the run directory's own record
            forwards = json.loads((Path(trial["run_dir"]) / "protpeft.json").read_text())["prefix_forwards"]
        rows.append(
            {
                "trial": f"lr={trial['config']['optim.lr']:g} r={trial['config']['lora.r']}",
                "trial_id": trial["trial_id"],
                "val_loss": trial["metrics"]["val_loss"],
                "test_loss": trial["metrics"].get("test_loss"),
                "prefix_forwards": forwards,
                "filled": trial["embedded_sequences"],
                "seconds": trial["seconds"],
                "steps": trial["steps"],
            }
        )
    if len(rows) != len(LRS) * len(RANKS):
        raise SystemExit(f"{experiment}: {len(rows)} trials, expected {len(LRS) * len(RANKS)}")
    return sorted(rows, key=lambda r: r["trial"])


def cache_contents(cache: Path) -> tuple[int, float]:
    """(prefix states held, MiB of shards) in a search's cache directory ($PROTPEFT_CACHE/embeddings/prefix-*)."""
    from safetensors import safe_open

    states, size = 0, 0
    for shard in (cache / "embeddings").glob("prefix-*/shard-*.safetensors"):
        with safe_open(shard, framework="pt") as fh:
            states += len(list(fh.keys()))
        size += shard.stat().st_size
    return states, size / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="esm2_t6_8M_UR50D", help="ESM-2 architecture (random weights)")
    parser.add_argument("--lora-layers", type=int, default=2, help="LoRA on the last N layers (cache: the rest)")
    parser.add_argument("--pairs", type=int, default=96, help="E. coli pairs in the subset (80/10/10 split)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per trial")
    parser.add_argument("--batch", type=int, default=8, help="pairs per optimizer step")
    parser.add_argument("--crop", type=int, default=512, help="tokens per protein at most")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pair subset")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per search before it is interrupted")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (experiments, caches, logs)")
    parser.add_argument("--quick", action="store_true", help="tiny 4-layer model, 24 pairs, 1 epoch: a smoke run")
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    ecoli_or_exit()
    work = Path(tempfile.mkdtemp(prefix="bench-prefix-tune-"))
    model = random_esm2(args.preset)
    try:
        run(args, work, model)
    finally:
        shutil.rmtree(model, ignore_errors=True)
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path, model: Path) -> None:
    from protpeft.models.backbone import ESM2_PRESETS

    load = os.getloadavg()
    layers = ESM2_PRESETS[args.preset][0]
    if not 0 < args.lora_layers < layers:
        raise SystemExit(f"--lora-layers must be 1..{layers - 1} for {args.preset} (layer 0 frozen, or no cache)")
    pairs = write_subset(work, args.pairs, args.seed)
    unique, keys = unique_sequences(pairs, model, args.crop)
    searches: dict[str, dict[str, Any]] = {}
    for way in WAYS:
        where = work / way
        where.mkdir()
        tune_file = write_tune_file(where, way, model, pairs, args)
        print(f"search with data.prefix_cache={way} ...", flush=True)
        wall, load_during = run_search(where, tune_file, args.timeout)
        trials = trial_rows(where / "runs" / f"prefix-{way}")
        states, mib = cache_contents(where / "cache")
        searches[way] = {"wall_s": wall, "load": load_during, "trials": trials, "cache_states": states}
        searches[way]["cache_mib"] = mib
        print(f"  {wall:.1f} s, prefix forwards {sum(t['prefix_forwards'] for t in trials)}", flush=True)

    on, off = (searches[w] for w in WAYS)
    names = [t["trial"] for t in on["trials"]]
    if names != [t["trial"] for t in off["trials"]]:
        raise SystemExit(f"the searches ran other trials: {names} vs {[t['trial'] for t in off['trials']]}")
    diffs = {n: abs(a["val_loss"] - b["val_loss"]) for n, a, b in zip(names, on["trials"], off["trials"], strict=True)}
    worst = max(diffs.values())

    def row(way: str) -> dict[str, Any]:
        search = searches[way]
        trials = search["trials"]
        return {
            "search": f"data.prefix_cache={way}",
            "wall_s": search["wall_s"],
            "load_1min_mean": search["load"],
            "trial_s_sum": sum(t["seconds"] for t in trials),
            "prefix_forwards": sum(t["prefix_forwards"] for t in trials),
            "unique_sequences": unique,
            **{f"val_loss {t['trial']}": f"{t['val_loss']:.6f}" for t in trials},
        }

    rows = [row(w) for w in WAYS]
    k = layers - args.lora_layers
    steps = on["trials"][0]["steps"]
    write_results(
        "prefix_cache_tune" + ("_quick" if args.quick else ""),
        rows,
        {
            "wall_off_vs_auto": off["wall_s"] / on["wall_s"],
            "trial_seconds_off_vs_auto": rows[1]["trial_s_sum"] / rows[0]["trial_s_sum"],
            "prefix_forwards_off_vs_auto": rows[1]["prefix_forwards"] / max(1, rows[0]["prefix_forwards"]),
            "max_val_loss_diff": f"{worst:.2e} (tolerance {TOLERANCE:g}; per trial: "
            + ", ".join(f"{n} {d:.1e}" for n, d in diffs.items())
            + ")",
            "cache_keys": f"{keys} distinct cropped sequences; the auto search's cache holds {on['cache_states']} "
            f"prefix states ({on['cache_mib']:.1f} MiB), the off search's {off['cache_states']}",
            "auto_forwards_equal_cache_keys": rows[0]["prefix_forwards"] == keys,
            "filled_by_trial": {t["trial"]: t["filled"] for t in on["trials"]},
            "trials": {way: searches[way]["trials"] for way in WAYS},
            "search": f"grid lr {list(LRS)} x LoRA r {list(RANKS)} = 4 trials, 2 at a time, 1 CPU each, ASHA off, "
            "metric val_loss; protpeft tune --no-report, MLflow off, a fresh PROTPEFT_CACHE per search",
            "model": f"{args.preset} architecture, random weights, LoRA key+value on the last {args.lora_layers} of "
            f"{layers} layers (cache: layers 0..{k - 1}), fp32",
            "data": f"E. coli D-SCRIPT pairs: {args.pairs} sampled (seed {args.seed}), seeded random 80/10/10 split, "
            f"{unique} unique sequences, crop {args.crop}, {args.batch} pairs per step, {args.epochs} epochs "
            f"({steps} steps per trial)",
            "load_average": f"{load[0]:.2f} before, {os.getloadavg()[0]:.2f} after (1 min; 2 cores)",
            "command": " ".join(["python -m benchmarks.bench_prefix_cache_tune", *sys.argv[1:]]),
        },
    )
    if on["cache_states"] == 0:  # the trials did not see PROTPEFT_CACHE: they used (and filled) another cache
        raise SystemExit("the auto search wrote no prefix states into its own PROTPEFT_CACHE")
    if worst > TOLERANCE:
        raise SystemExit(f"the cache is not exact: val losses differ by up to {worst:.2e} (> {TOLERANCE:g})")


if __name__ == "__main__":
    main()
