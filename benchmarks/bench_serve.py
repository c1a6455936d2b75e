"""Load test of ``protpeft serve``: requests/s and latency from a second process on loopback, and the replica's
memory with 1 vs 8 adapters of one base model loaded.

Setup (in a temporary directory, with its own MLflow store): a random-weight ESM-2 of a real architecture, one LoRA
run of a few steps on synthetic pairs, and 7 variants of it (its adapter and head weights perturbed), registered as
``bench-0`` … ``bench-7`` with alias ``live``. Then:

1. ``protpeft serve bench-0@live`` starts as a subprocess (local Ray, one replica with 1 CPU);
2. ``--clients`` threads of this process send ``POST /v1/models/bench-0/predict`` (``--pairs`` pairs each, one
   keep-alive connection per client) for ``--seconds``; errors are counted, latencies kept;
3. the 7 other versions are added at run time (``POST /admin/models``) and the load test repeats, each request
   going to one of the 8 models in turn;
4. after each phase the deployment's own report (``GET /v1/models``) gives the replica's RSS and its parameter bytes.

    .venv/bin/python -m benchmarks.bench_serve [--seconds 20] [--clients 8] [--pairs 1] [--preset esm2_t6_8M_UR50D]

On 2 shared CPU cores the 8M model is compute-bound (~25 GFLOP per batch of 8 pairs); ``--preset tiny`` shows the
serving overhead (HTTP, batching, adapter switching) instead.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import random_esm2, write_results

ADAPTERS = 8
DEFAULT_PRESET = "esm2_t6_8M_UR50D"


def make_runs(work: Path, preset: str) -> tuple[list[Path], list[tuple[str, str]]]:
    """One trained LoRA run directory and 7 perturbed copies; the synthetic pairs' sequences for requests."""
    from safetensors.torch import load_file, save_file

    from protpeft.config import load_config
    from protpeft.data.fasta import read_fasta
    from protpeft.data.synth import write_synthetic
    from protpeft.trainer.run import run_training

    if preset == "tiny":
        from protpeft.models.backbone import init_tiny

        model = init_tiny(work / "tiny")
    else:
        model = random_esm2(preset)
    data = write_synthetic("ppi", work / "ppi", n=200)
    cfg = load_config(None, [
        "name=bench-serve", f"output_dir={work / 'runs'}", f"model.base={model}", "mode=lora", "task=ppi",
        f"data.pairs={data['pairs']}", f"data.sequences={data['sequences']}", "optim.batch_size=4",
        "optim.grad_accum=1", "optim.max_steps=2", "tracking.mlflow=false",
    ])  # fmt: skip
    first = run_training(cfg).run_dir
    runs = [first]
    for i in range(1, ADAPTERS):
        copy = work / "runs" / f"variant-{i}"
        shutil.copytree(first, copy, ignore=shutil.ignore_patterns("checkpoints"))
        generator = torch.Generator().manual_seed(i)
        for name in ("adapter_model.safetensors", "head.safetensors"):
            state = load_file(copy / name)
            save_file({k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in state.items()}, copy / name)
        runs.append(copy)
    seqs = list(read_fasta(data["sequences"]).values())
    rng = random.Random(0)
    pairs = [(rng.choice(seqs), rng.choice(seqs)) for _ in range(256)]
    return runs, pairs


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def post_json(url: str, payload: dict) -> tuple[int, Any]:
    req = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as response:
        return response.status, json.loads(response.read())


def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"protpeft serve exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            get_json(f"{url}/healthz")
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"protpeft serve not ready after {timeout} s:\n{log.read_text()[-4000:]}")


def load_test(port: int, models: list[str], pairs: list, per_request: int, clients: int, seconds: float) -> dict:
    """``clients`` threads, each with one keep-alive connection, posting for ``seconds``; latency percentiles."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(index: int) -> None:
        rng = random.Random(index)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        n = index
        while time.perf_counter() < stop_at:
            model = models[n % len(models)]
            n += 1
            body = json.dumps({"pairs": [list(rng.choice(pairs)) for _ in range(per_request)]})
            started = time.perf_counter()
            try:
                conn.request("POST", f"/v1/models/{model}/predict", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                payload = response.read()
                ok = response.status == 200 and len(json.loads(payload)["probabilities"]) == per_request
                problem = None if ok else f"{response.status}: {payload[:200]!r}"
            except (OSError, http.client.HTTPException) as err:
                problem = repr(err)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            elapsed = time.perf_counter() - started
            with lock:
                if problem is None:
                    latencies.append(elapsed)
                else:
                    errors.append(problem)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "requests_per_s": len(latencies) / wall,
        "pairs_per_s": len(latencies) * per_request / wall,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
    }


def phase(url: str, port: int, models: list[str], pairs: list, args: argparse.Namespace) -> dict:
    """One load phase, with the mean batch the replica formed during it and its memory afterwards."""
    before = get_json(f"{url}/v1/models")["batching"]
    row = {"adapters": len(models), **load_test(port, models, pairs, args.pairs, args.clients, args.seconds)}
    after = get_json(f"{url}/v1/models")["batching"]
    requests = after["requests"] - before["requests"]
    row["requests_per_batch"] = requests / max(1, after["batches"] - before["batches"])  # @serve.batch
    row["requests_per_pass"] = requests / max(1, after["model_passes"] - before["model_passes"])  # model thread
    return row | memory_row(url)


def memory_row(url: str) -> dict:
    storage = get_json(f"{url}/v1/models")["storage"]
    params = storage["base_bytes"] + storage["adapter_bytes"] + storage["head_bytes"] + storage["own_backbone_bytes"]
    return {
        "rss_mb": storage["rss_bytes"] / 2**20,
        "param_mb": params / 2**20,
        "base_copies": storage["base_copies"],
        "base_mb": storage["base_bytes"] / 2**20,
        "adapters_mb": storage["adapter_bytes"] / 2**20,
        "base_mb_if_separate": storage["base_bytes_if_separate"] / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20, help="duration of each load phase")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--pairs", type=int, default=1, help="pairs per request")
    parser.add_argument("--preset", default=DEFAULT_PRESET, help="random ESM-2 architecture, or 'tiny' (results go to "
                        "serve_<preset>.json)")  # fmt: skip
    parser.add_argument("--port", type=int, default=8437)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    os.environ.update({"PROTPEFT_HOME": str(work / "home"), "MLFLOW_DISABLE_TELEMETRY": "true"})
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from protpeft.registry import register_run

    runs, pairs = make_runs(work, args.preset)
    for i, run in enumerate(runs):
        register_run(run, f"bench-{i}", alias="live")
    names = [f"bench-{i}" for i in range(ADAPTERS)]

    url = f"http://127.0.0.1:{args.port}"
    log = work / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with log.open("wb") as fh:
        server = subprocess.Popen([str(Path(sys.executable).with_name("protpeft")), "serve", "bench-0@live", "--port",
                                   str(args.port)], env=env, stdout=fh, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip
    rows = []
    try:
        started = time.perf_counter()
        wait_ready(url, server, log)
        ready_s = time.perf_counter() - started
        load_test(args.port, names[:1], pairs, args.pairs, args.clients, 2)  # warm-up
        rows.append(phase(url, args.port, names[:1], pairs, args))
        for name in names[1:]:
            status, _ = post_json(f"{url}/admin/models", {"ref": f"{name}@live"})
            assert status == 201
        load_test(args.port, names, pairs, args.pairs, args.clients, 2)
        rows.append(phase(url, args.port, names, pairs, args))
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    one, eight = rows
    first_errors = {f"first error, {row['adapters']} adapter(s)": row.pop("first_error") for row in rows}
    notes = {
        "model": f"{args.preset} (random weights), LoRA r8 on key+value, {ADAPTERS} versions registered",
        "load": f"{args.clients} client threads in a second process, {args.pairs} pair(s)/request, "
        f"{args.seconds:.0f} s per phase, loopback; the 8-adapter phase rotates requests over the 8 models",
        "server": "protpeft serve: local Ray, one replica with 1 CPU (1 torch thread), @serve.batch max 8; "
        "requests_per_batch: per @serve.batch call, requests_per_pass: per model-thread pass (batches merged)",
        "RSS ratio 8 / 1 adapters": eight["rss_mb"] / one["rss_mb"],
        "parameter bytes ratio 8 / 1 adapters": eight["param_mb"] / one["param_mb"],
        "parameter bytes ratio if each version loaded its own base": eight["base_mb_if_separate"] / one["param_mb"],
        "server ready after (s)": ready_s,
        "machine": f"{os.cpu_count()} cores shared with the client threads (and whatever else runs)",
        **{k: v for k, v in first_errors.items() if v},
    }
    write_results("serve" if args.preset == DEFAULT_PRESET else f"serve_{args.preset}", rows, notes)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
