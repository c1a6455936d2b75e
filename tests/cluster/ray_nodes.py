"""Ray nodes of the local test cluster: a head with no CPUs, and worker nodes that each live in a mount namespace of
their own where the driver's files are hidden behind empty tmpfs mounts.

A worker node is started as ``unshare -m --propagation private bash -c '<mounts>; exec ray start … --block'``: the
mounts exist only inside that namespace (and vanish with its last process), so the rest of the machine is untouched.
A few paths under a hidden directory may be kept visible (bind-mounted back), which is how the venv stays usable
while the worktree around it is hidden.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from processes import PortBlock, ProcessGroup, http_status, port_open, wait_until

NODE_PORT_NAMES = [
    "node-manager-port",
    "object-manager-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
]
"""Per-node ports whose defaults collide when several nodes share one machine."""

WORKER_PORTS = 40
"""Ports for the worker processes of one node (``--min/max-worker-port``), one per live worker."""

OBJECT_STORE_BYTES = 200 * 1024 * 1024

HEAD_ENV = {
    # A killed node is declared dead after ~5 failed 1-s health checks instead of ~5 × 3 s; the 5-s timeout keeps a
    # slow but alive raylet (2 loaded cores) from being declared dead.
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "5000",
    "RAY_health_check_failure_threshold": "5",
}


def ray_binary() -> str:
    return str(Path(sys.executable).parent / "ray")


def namespace_probe() -> str | None:
    """None when this process may create a mount namespace and mount a tmpfs in it, else the kernel's refusal."""
    probe = 'd=$(mktemp -d) && mount -t tmpfs tmpfs "$d" && umount "$d" && rmdir "$d"'
    try:
        done = subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", probe],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unshare -m not usable: {error}"
    if done.returncode != 0:
        return f"unshare -m + mount tmpfs refused: {(done.stderr or done.stdout).strip()}"
    return None


def _inside(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def namespace_script(hide: list[Path], keep: list[Path], stage: Path, workdir: Path, argv: list[str]) -> str:
    """The bash program run inside the new mount namespace: stage the ``keep`` paths (bind mounts), cover each
    directory of ``hide`` with an empty tmpfs, bind the kept paths back at their place, leave the hidden tree (a
    process's cwd would go on seeing what is under a new mount), exec ``argv``. Hidden directories nested in another
    hidden one are covered by the outer mount; paths that do not exist are skipped (nothing is created on the host)."""
    q = shlex.quote
    outer: list[Path] = []
    for path in sorted({p.resolve() for p in hide if p.is_dir()}, key=lambda p: len(p.parts)):
        if not any(_inside(path, o) for o in outer):
            outer.append(path)
    kept = [k.resolve() for k in keep if k.exists() and any(_inside(k.resolve(), o) for o in outer)]
    staged = [(k, stage / str(i)) for i, k in enumerate(kept)]
    lines = ["set -eu"]
    lines += [f"mkdir -p {q(str(s))} && mount --bind {q(str(k))} {q(str(s))}" for k, s in staged]
    lines += [f"mount -t tmpfs -o mode=0755 tmpfs {q(str(h))}" for h in outer]
    lines += [f"mkdir -p {q(str(k))} && mount --bind {q(str(s))} {q(str(k))} && umount {q(str(s))}" for k, s in staged]
    lines += [f"cd {q(str(workdir))}", "exec " + shlex.join(argv)]
    return "\n".join(lines)


@dataclass
class RayNode:
    """One ``ray start --block`` process group and the ports it was given."""

    name: str
    group: ProcessGroup
    ports: dict[str, int]
    resources: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"name": self.name, "group": self.group.to_json(), "ports": self.ports, "resources": self.resources}

    @classmethod
    def from_json(cls, data: dict) -> RayNode:
        return cls(data["name"], ProcessGroup.from_json(data["group"]), data["ports"], data["resources"])


def _node_port_args(ports: PortBlock) -> tuple[dict[str, int], list[str]]:
    assigned = {name: ports.take() for name in NODE_PORT_NAMES}
    workers = ports.take_range(WORKER_PORTS)
    assigned["min-worker-port"], assigned["max-worker-port"] = workers[0], workers[-1]
    return assigned, [f"--{name}={port}" for name, port in assigned.items()]


def _common_args(temp_dir: Path) -> list[str]:
    return [
        "--node-ip-address=127.0.0.1", f"--object-store-memory={OBJECT_STORE_BYTES}", f"--temp-dir={temp_dir}",
        "--disable-usage-stats", "--block",
    ]  # fmt: skip


def start_head(root: Path, ports: PortBlock, env: dict[str, str], num_cpus: int = 0) -> RayNode:
    """A head node with no CPUs (nothing but drivers and Ray's own actors run on it), dashboard on; it sees the
    driver's files (it stands for the machine the user works on). With ``num_cpus`` it is a one-node cluster that
    trains too (benchmarks/bench_cluster_overhead.py compares against one)."""
    assigned, port_args = _node_port_args(ports)
    for name in ("port", "dashboard-port", "ray-client-server-port"):
        assigned[name] = ports.take()
    argv = [
        ray_binary(), "start", "--head", f"--port={assigned['port']}",
        f"--dashboard-port={assigned['dashboard-port']}",
        f"--ray-client-server-port={assigned['ray-client-server-port']}", "--dashboard-host=127.0.0.1",
        "--include-dashboard=true", f"--num-cpus={num_cpus}", *port_args, *_common_args(root / "ray" / "head"),
    ]  # fmt: skip
    env = {**env, **HEAD_ENV, **api_server_env(assigned["dashboard-port"])}
    group = ProcessGroup.start("ray-head", argv, root / "logs" / "ray-head.log", env, cwd=root)
    return RayNode("head", group, assigned)


def start_worker_node(
    root: Path,
    name: str,
    gcs: str,
    ports: PortBlock,
    env: dict[str, str],
    hide: list[Path],
    keep: list[Path],
    num_cpus: int,
) -> RayNode:
    """A worker node in its own mount namespace, with ``num_cpus`` CPUs and a custom resource ``{name: num_cpus}``
    that lets a test place work on it. Its Ray temp dir (logs, sockets) is ``root/ray/<name>`` on the host."""
    node_dir = root / "ray" / name
    node_dir.mkdir(parents=True, exist_ok=True)
    assigned, port_args = _node_port_args(ports)
    resources = {name: float(num_cpus)}
    argv = [
        ray_binary(), "start", f"--address={gcs}", f"--num-cpus={num_cpus}", f"--resources={json.dumps(resources)}",
        *port_args, *_common_args(node_dir),
    ]  # fmt: skip
    script = namespace_script(hide, keep, root / "stage" / name, node_dir, argv)
    (node_dir / "start.sh").write_text(script + "\n")
    unshare = ["unshare", "-m", "--propagation", "private", "bash", str(node_dir / "start.sh")]
    group = ProcessGroup.start(f"ray-{name}", unshare, root / "logs" / f"ray-{name}.log", env, cwd=node_dir)
    return RayNode(name, group, assigned, resources)


def wait_head(head: RayNode, token: str, timeout: float = 120) -> float:
    """Until the GCS port accepts connections and the dashboard answers; returns the seconds waited."""
    dashboard = f"http://127.0.0.1:{head.ports['dashboard-port']}/api/version"
    auth = {"Authorization": f"Bearer {token}"}
    return wait_until(
        "Ray head (GCS + dashboard)",
        lambda: port_open(head.ports["port"]) and http_status(dashboard, auth) == 200,
        timeout,
        alive=head.group,
    )


def alive_nodes(dashboard_url: str, token: str) -> list[dict]:
    """The ALIVE nodes (id and resources) from the state API's HTTP endpoint, with this cluster's token in the header
    (no ``ray.init`` and no process-wide token cache: ``ray.util.state`` reads the token from the environment once)."""
    query = urllib.parse.urlencode({"filter_keys": "state", "filter_predicates": "=", "filter_values": "ALIVE"})
    request = urllib.request.Request(f"{dashboard_url}/api/v0/nodes?{query}",
                                     headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        rows = json.load(response)["data"]["result"]["result"]
    return [{"node_id": row["node_id"], "resources": row.get("resources_total", {})} for row in rows]


def wait_node_alive(node: RayNode, dashboard_url: str, token: str, timeout: float = 120) -> float:
    """Until an ALIVE node carries ``node``'s custom resource; returns the seconds waited."""

    def joined() -> bool:
        try:
            return any(node.name in n["resources"] for n in alive_nodes(dashboard_url, token))
        except (OSError, ValueError, KeyError):  # the state API answers errors while the dashboard warms up
            return False

    return wait_until(f"Ray node {node.name} to join", joined, timeout, alive=node.group, every=0.5)


def api_server_env(dashboard_port: int) -> dict[str, str]:
    """Ray's processes find their cluster's state API by ``RAY_API_SERVER_ADDRESS``, else by looking for running
    clusters on the machine, which fails while other tests' Ray instances run beside this cluster."""
    return {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard_port}"}


def node_env(base: dict[str, str], token: str) -> dict[str, str]:
    """The environment of every node process: token auth on with this cluster's own token, no usage reports, the
    venv first on PATH, and no inherited RAY_ADDRESS that could point a node at another cluster."""
    env = {k: v for k, v in base.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}",
    )
    return env
