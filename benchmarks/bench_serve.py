"""Load test of ``protpeft serve`` against its peer, ``mlflow models serve``, on the same registered version.

Setup (in a temporary directory, with its own MLflow store): a random-weight ESM-2 of a real architecture, one LoRA
run of a few steps on synthetic pairs, and 7 variants of it (its adapter and head weights perturbed), registered as
``bench-0`` … ``bench-7`` with alias ``live``. Two request streams (:mod:`benchmarks.serve_streams`): ``random``
(every request new proteins of ~300 random residues: no cache can help) and ``ecoli`` (the D-SCRIPT E. coli test
pairs in file order, as a proteome screen sends them: proteins recur). Then, per round and stream, one server at a
time, each freshly started (no cache carried over), alternating:

1. ``protpeft serve bench-0@live`` (its defaults); ``--clients`` threads of this process send
   ``POST /v1/models/bench-0/predict`` (``--pairs`` pairs each, one keep-alive connection per client) for
   ``--seconds``;
2. the same with the 7 other versions added at run time (``POST /admin/models``), request ``i`` going to model
   ``i mod 8``;
3. ``mlflow models serve -m models:/bench-0@live --env-manager local`` (its defaults) gets the same stream on
   ``POST /invocations``.

Each phase starts after a 2 s warm-up on other (random) proteins and reports req/s, p50, p99, errors, protpeft's
embedding-cache hit rate and share of proteins encoded (from its ``/metrics``), the time from start to the first
healthy answer, the RSS of the server's whole process tree (for protpeft: Ray's processes and the replica) and the
1-minute load average. Results: benchmarks/results/serve.json and .md.

    flock /tmp/protpeft-heavy.lock .venv/bin/python -m benchmarks.bench_serve [--seconds 12] [--rounds 2]
        [--clients 8] [--pairs 1] [--streams random,ecoli]

On shared CPU cores absolute numbers are noisy; the ratios within one round are what counts. ``--preset tiny`` shows
the serving overhead (HTTP, batching, adapters) instead of the model's compute.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
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
from benchmarks.serve_streams import STREAMS, PairStream, ecoli_pairs, stream_skip_reason

ADAPTERS = 8
DEFAULT_PRESET = "esm2_t6_8M_UR50D"


def make_runs(work: Path, preset: str) -> list[Path]:
    """One trained LoRA run directory and 7 perturbed copies."""
    from safetensors.torch import load_file, save_file

    from protpeft.config import load_config
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
    return runs


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


def load_test(server: Server, models: list[str], stream: PairStream, clients: int, seconds: float) -> dict:
    """``clients`` threads, each with one keep-alive connection, posting the stream's requests for ``seconds``."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        while time.perf_counter() < stop_at:
            index, pairs = stream.take()
            body = server.body(pairs)
            started = time.perf_counter()
            try:
                conn.request("POST", server.path(models[index % len(models)]), body,
                             {"Content-Type": "application/json"})  # fmt: skip
                response = conn.getresponse()
                payload = response.read()
                ok = response.status == 200 and server.answers(payload) == len(pairs)
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

    threads = [threading.Thread(target=client) for _ in range(clients)]
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


CACHE_COUNTERS = ("protpeft_embedding_cache_hits_total", "protpeft_embedding_cache_misses_total",
                  "protpeft_requested_sequences_total", "protpeft_encoded_sequences_total")  # fmt: skip


def cache_counters(server: Server) -> dict[str, float]:
    """protpeft's embedding-cache and encoding counters, from its /metrics (the peer has none)."""
    if server.label != "protpeft":
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=60) as response:
        text = response.read().decode()
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name in CACHE_COUNTERS}  # fmt: skip


def run_phase(server: Server, adapters: int, stream_name: str, args: argparse.Namespace, env: dict, log: Path,
              pairs: list | None, round_: int) -> dict:  # fmt: skip
    """A freshly started server (its cache empty), ``adapters`` models, a warm-up, then the measured stream."""
    process, ready_s = start(server, env, log)
    url = f"http://127.0.0.1:{server.port}"
    names = [f"bench-{i}" for i in range(adapters)]
    try:
        for name in names[1:]:
            assert post_json(f"{url}/admin/models", {"ref": f"{name}@live"}, ADMIN_HEADERS)[0] == 201
        # warm-up on other proteins than the measured stream's (nothing of it is cached before it starts)
        load_test(server, names, PairStream("random", args.pairs, seed=10_000 + round_), args.clients, 2)
        before = cache_counters(server)
        result = load_test(server, names, PairStream(stream_name, args.pairs, seed=round_, pairs=pairs), args.clients,
                           args.seconds)  # fmt: skip
        after = cache_counters(server)
        if server.label == "protpeft" and adapters == ADAPTERS:
            with urllib.request.urlopen(f"{url}/metrics", timeout=60) as response:
                RESULTS.mkdir(parents=True, exist_ok=True)  # what /metrics showed after the load (not committed)
                (RESULTS / "serve_metrics.txt").write_bytes(response.read())
        delta = {k: after[k] - before.get(k, 0.0) for k in after}
        lookups = delta.get(CACHE_COUNTERS[0], 0.0) + delta.get(CACHE_COUNTERS[1], 0.0)
        requested = delta.get(CACHE_COUNTERS[2], 0.0)
        return {"server": server.label, "round": round_, "stream": stream_name, "adapters": adapters, **result,
                "cache_hit_rate": delta[CACHE_COUNTERS[0]] / lookups if lookups else float("nan"),
                "encoded_share": delta[CACHE_COUNTERS[3]] / requested if requested else float("nan"),
                "ready_s": ready_s, "rss_mb": tree_rss_mb(process), "load_1m": os.getloadavg()[0]}  # fmt: skip
    finally:
        stop(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12, help="duration of each load phase")
    parser.add_argument("--rounds", type=int, default=2, help="protpeft / peer alternations")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--pairs", type=int, default=1, help="pairs per request")
    parser.add_argument("--streams", default=",".join(STREAMS), help=f"request streams, of {', '.join(STREAMS)}")
    parser.add_argument("--preset", default=DEFAULT_PRESET, help="random ESM-2 architecture, or 'tiny' (results go to "
                        "serve_<preset>.json)")  # fmt: skip
    parser.add_argument("--port", type=int, default=8437)
    args = parser.parse_args()
    streams, skipped = [], []
    for name in args.streams.split(","):
        reason = stream_skip_reason(name)
        (skipped if reason else streams).append(reason or name)
    for reason in skipped:
        print(reason, file=sys.stderr)
    load_start = os.getloadavg()

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    os.environ.update({"PROTPEFT_HOME": str(work / "home"), "MLFLOW_DISABLE_TELEMETRY": "true"})
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from protpeft.registry import register_run, tracking_uri

    for i, run in enumerate(make_runs(work, args.preset)):
        register_run(run, f"bench-{i}", alias="live")
    pairs = {"random": None, "ecoli": ecoli_pairs() if "ecoli" in streams else None}

    python = str(Path(sys.executable))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {
        "MLFLOW_TRACKING_URI": tracking_uri(),
        "PATH": f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # the peer execs uvicorn by name
    }
    protpeft = Server("protpeft", [str(Path(python).with_name("protpeft")), "serve", "bench-0@live", "--port",
                                   str(args.port), "--admin-token", ADMIN_TOKEN], "/healthz", args.port)  # fmt: skip
    peer = Server("mlflow models serve", [python, "-m", "mlflow", "models", "serve", "-m", "models:/bench-0@live",
                                          "--env-manager", "local", "--host", "127.0.0.1", "--port",
                                          str(args.port + 1)], "/ping", args.port + 1)  # fmt: skip
    log = work / "servers.log"
    rows: list[dict] = []
    for round_ in range(1, args.rounds + 1):  # alternating, one server at a time
        for stream in streams:
            rows.append(run_phase(protpeft, 1, stream, args, env, log, pairs[stream], round_))
            rows.append(run_phase(protpeft, ADAPTERS, stream, args, env, log, pairs[stream], round_))
            rows.append(run_phase(peer, 1, stream, args, env, log, pairs[stream], round_))
    errors = {f"first error, {r['server']} round {r['round']} {r['stream']} ({r['adapters']} adapters)":
              r.pop("first_error") for r in rows}  # fmt: skip
    write_results("serve" if args.preset == DEFAULT_PRESET else f"serve_{args.preset}", rows,
                  notes(rows, args, streams, skipped, load_start, errors))  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)


def notes(rows: list[dict], args: argparse.Namespace, streams: list[str], skipped: list[str],
          load_start: tuple[float, ...], errors: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    ratios = {}
    for round_ in range(1, args.rounds + 1):
        for stream in streams:
            mine = [r for r in rows if (r["round"], r["stream"]) == (round_, stream)]
            ours = {r["adapters"]: r for r in mine if r["server"] == "protpeft"}
            theirs = next(r for r in mine if r["server"] != "protpeft")
            ratios[f"round {round_} {stream}: protpeft / peer req/s (1 adapter, 8 adapters)"] = ", ".join(
                f"{ours[n]['requests_per_s'] / theirs['requests_per_s']:.2f}x" for n in (1, ADAPTERS)
            )
            ratios[f"round {round_} {stream}: p99 protpeft / peer (1 adapter, 8 adapters)"] = ", ".join(
                f"{ours[n]['p99_ms'] / theirs['p99_ms']:.2f}" for n in (1, ADAPTERS)
            )
    loads = [r["load_1m"] for r in rows]
    return {
        "model": f"{args.preset} (random weights), LoRA r8 on key+value, {ADAPTERS} versions registered",
        "load": f"{args.clients} client threads in a second process, {args.pairs} pair(s)/request, "
        f"{args.seconds:.0f} s per phase after a 2 s warm-up on other proteins, loopback; request i to model i mod M",
        "streams": "random: fresh 250-350-residue random proteins in every request; ecoli: D-SCRIPT E. coli test "
        "pairs in file order (proteins recur)",
        "servers": "each with its defaults, freshly started per phase, one at a time, alternating: `protpeft serve "
        "bench-0@live` (+7 via POST /admin/models) and `mlflow models serve -m models:/bench-0@live --env-manager "
        "local`; rss_mb: the server's whole process tree; cache_hit_rate: hits / lookups of distinct proteins per "
        "pass; encoded_share: proteins that went through the backbone / proteins requested",
        **ratios,
        "machine": f"{os.cpu_count()} cores shared with the client threads and other work: 1-minute load average "
        f"{load_start[0]:.1f} at the start, {min(loads):.1f}-{max(loads):.1f} at the phases' ends",
        **{k: v for k, v in errors.items() if v},
        **({"skipped": "; ".join(skipped)} if skipped else {}),
    }


if __name__ == "__main__":
    main()
