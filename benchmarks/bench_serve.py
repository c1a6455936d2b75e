"""Load test of ``protpeft serve`` against its peer, ``mlflow models serve``, on the same registered version.

Setup (in a temporary directory, with its own MLflow store): a random-weight ESM-2 of a real architecture, one LoRA
run of a few steps on synthetic pairs, and 7 variants of it (its adapter and head weights perturbed), registered as
``bench-0`` … ``bench-7`` with alias ``live``. Then, one server at a time, alternating for ``--rounds`` rounds:

1. ``protpeft serve bench-0@live`` (its defaults) starts as a subprocess; ``--clients`` threads of this process send
   ``POST /v1/models/bench-0/predict`` (``--pairs`` pairs each, one keep-alive connection per client) for
   ``--seconds``; then the 7 other versions are added at run time (``POST /admin/models``) and the load repeats,
   each request going to one of the 8 models in turn;
2. ``mlflow models serve -m models:/bench-0@live --env-manager local`` (its defaults) gets the same payloads and load
   on ``POST /invocations``.

Each phase reports req/s, p50, p99, errors, the time from start to the first healthy answer, and the RSS of the
server's whole process tree (for protpeft: Ray's processes and the replica). Results: benchmarks/results/serve.json
and .md.

    .venv/bin/python -m benchmarks.bench_serve [--seconds 12] [--rounds 2] [--clients 8] [--pairs 1]

On shared CPU cores absolute numbers are noisy; the ratios within one run are what counts. ``--preset tiny`` shows
the serving overhead (HTTP, batching, adapter switching) instead of the model's compute.
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

from benchmarks.common import RESULTS, random_esm2, write_results

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


ADMIN_TOKEN = "bench-admin-token"
PROTPEFT_HEADERS = {"Content-Type": "application/json"}
ADMIN_HEADERS = {**PROTPEFT_HEADERS, "Authorization": f"Bearer {ADMIN_TOKEN}"}


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def post_json(url: str, payload: dict, headers: dict[str, str] = PROTPEFT_HEADERS) -> tuple[int, Any]:
    req = urllib.request.Request(url, json.dumps(payload).encode(), headers)
    with urllib.request.urlopen(req, timeout=120) as response:
        return response.status, json.loads(response.read())


class Server:
    """A server under test: its command, where it is healthy, and how a request looks."""

    def __init__(self, label: str, command: list[str], health: str, port: int) -> None:
        self.label, self.command, self.health, self.port = label, command, health, port

    def path(self, model: str) -> str:
        return f"/v1/models/{model}/predict" if self.label == "protpeft" else "/invocations"

    def body(self, pairs: list[tuple[str, str]]) -> str:
        if self.label == "protpeft":
            return json.dumps({"pairs": [list(p) for p in pairs]})
        return json.dumps({"dataframe_split": {"columns": ["seq_a", "seq_b"], "data": [list(p) for p in pairs]}})

    def answers(self, payload: bytes) -> int:
        body = json.loads(payload)
        return len(body["probabilities"] if self.label == "protpeft" else body["predictions"])


def start(server: Server, env: dict[str, str], log: Path) -> tuple[subprocess.Popen, float]:
    """The running server and the seconds it took to answer its health check."""
    with log.open("ab") as fh:
        process = subprocess.Popen(server.command, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    started = time.perf_counter()
    deadline = started + 600
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{server.label} exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}{server.health}", timeout=5).read()
            return process, time.perf_counter() - started
        except OSError:
            time.sleep(0.25)
    stop(process)
    raise SystemExit(f"{server.label} not ready after 600 s:\n{log.read_text()[-4000:]}")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def tree_rss_mb(process: subprocess.Popen) -> float:
    """Resident memory of the server and every process it started (Ray's GCS, raylet, replicas …)."""
    import psutil

    root = psutil.Process(process.pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def load_test(server: Server, models: list[str], pairs: list, per_request: int, clients: int, seconds: float) -> dict:
    """``clients`` threads, each with one keep-alive connection, posting for ``seconds``; latency percentiles."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(index: int) -> None:
        rng = random.Random(index)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        n = index
        while time.perf_counter() < stop_at:
            model = models[n % len(models)]
            n += 1
            body = server.body([rng.choice(pairs) for _ in range(per_request)])
            started = time.perf_counter()
            try:
                conn.request("POST", server.path(model), body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                payload = response.read()
                ok = response.status == 200 and server.answers(payload) == per_request
                problem = None if ok else f"{response.status}: {payload[:200]!r}"
            except (OSError, http.client.HTTPException) as err:
                problem = repr(err)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
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
        "requests_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
    }


def run_protpeft(server: Server, names: list[str], pairs: list, args: argparse.Namespace, env: dict, log: Path,
                 round_: int) -> list[dict]:  # fmt: skip
    """Two phases on one protpeft server: bench-0 alone, then all 8 versions (added at run time)."""
    process, ready_s = start(server, env, log)
    rows = []
    try:
        load_test(server, names[:1], pairs, args.pairs, args.clients, 2)  # warm-up
        rows.append(phase(server, process, ready_s, names[:1], pairs, args, round_))
        url = f"http://127.0.0.1:{server.port}"
        for name in names[1:]:
            assert post_json(f"{url}/admin/models", {"ref": f"{name}@live"}, ADMIN_HEADERS)[0] == 201
        load_test(server, names, pairs, args.pairs, args.clients, 2)
        rows.append(phase(server, process, ready_s, names, pairs, args, round_))
        with urllib.request.urlopen(f"{url}/metrics", timeout=60) as response:
            RESULTS.mkdir(parents=True, exist_ok=True)  # what /metrics showed after the load (not committed)
            (RESULTS / "serve_metrics.txt").write_bytes(response.read())
    finally:
        stop(process)
    return rows


def run_peer(server: Server, pairs: list, args: argparse.Namespace, env: dict, log: Path, round_: int) -> dict:
    process, ready_s = start(server, env, log)
    try:
        load_test(server, ["bench-0"], pairs, args.pairs, args.clients, 2)  # warm-up
        return phase(server, process, ready_s, ["bench-0"], pairs, args, round_)
    finally:
        stop(process)


def phase(server: Server, process: subprocess.Popen, ready_s: float, models: list[str], pairs: list,
          args: argparse.Namespace, round_: int) -> dict:  # fmt: skip
    result = load_test(server, models, pairs, args.pairs, args.clients, args.seconds)
    return {"server": server.label, "round": round_, "adapters": len(models), **result, "ready_s": ready_s,
            "rss_mb": tree_rss_mb(process)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12, help="duration of each load phase")
    parser.add_argument("--rounds", type=int, default=2, help="protpeft / peer alternations")
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

    from protpeft.registry import tracking_uri

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"MLFLOW_TRACKING_URI": tracking_uri()}
    python = str(Path(sys.executable))
    protpeft = Server("protpeft", [str(Path(python).with_name("protpeft")), "serve", "bench-0@live", "--port",
                                   str(args.port), "--admin-token", ADMIN_TOKEN], "/healthz", args.port)  # fmt: skip
    peer = Server("mlflow models serve", [python, "-m", "mlflow", "models", "serve", "-m", "models:/bench-0@live",
                                          "--env-manager", "local", "--host", "127.0.0.1", "--port",
                                          str(args.port + 1)], "/ping", args.port + 1)  # fmt: skip
    log = work / "servers.log"
    rows: list[dict] = []
    for round_ in range(1, args.rounds + 1):  # alternating, one server at a time
        rows += run_protpeft(protpeft, names, pairs, args, env, log, round_)
        rows.append(run_peer(peer, pairs, args, env, log, round_))
    errors = {f"first error, {r['server']} round {r['round']} ({r['adapters']} adapters)": r.pop("first_error")
              for r in rows}  # fmt: skip
    ratios = {}
    for round_ in range(1, args.rounds + 1):
        ours = next(r for r in rows if r["round"] == round_ and r["server"] == "protpeft" and r["adapters"] == 1)
        eight = next(r for r in rows if r["round"] == round_ and r["server"] == "protpeft" and r["adapters"] == 8)
        theirs = next(r for r in rows if r["round"] == round_ and r["server"] != "protpeft")
        ratios[f"round {round_}: protpeft / peer req/s (1 adapter, 8 adapters)"] = (
            f"{ours['requests_per_s'] / theirs['requests_per_s']:.2f}x, "
            f"{eight['requests_per_s'] / theirs['requests_per_s']:.2f}x"
        )
        ratios[f"round {round_}: p99 protpeft / peer"] = f"{ours['p99_ms'] / theirs['p99_ms']:.2f}"
    notes = {
        "model": f"{args.preset} (random weights), LoRA r8 on key+value, {ADAPTERS} versions registered",
        "load": f"{args.clients} client threads in a second process, {args.pairs} pair(s)/request of synthetic "
        f"proteins, {args.seconds:.0f} s per phase after a 2 s warm-up, loopback; the 8-adapter phase rotates "
        "requests over the 8 models",
        "servers": "each with its defaults, one at a time, alternating: `protpeft serve bench-0@live` and `mlflow "
        "models serve -m models:/bench-0@live --env-manager local`; rss_mb: the server's whole process tree",
        **ratios,
        "machine": f"{os.cpu_count()} cores shared with the client threads (and whatever else runs)",
        **{k: v for k, v in errors.items() if v},
    }
    write_results("serve" if args.preset == DEFAULT_PRESET else f"serve_{args.preset}", rows, notes)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
