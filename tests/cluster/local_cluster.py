"""A shared-nothing Ray cluster on this machine, for tests and by hand: an S3 server (SeaweedFS), a Ray head with no
CPUs, and worker nodes that cannot read the driver's files.

By hand::

    python tests/cluster/local_cluster.py up      # prints the variables to export, writes <root>/cluster.json
    python tests/cluster/local_cluster.py down    # stops what `up` started (by process group), removes <root>
    python tests/cluster/local_cluster.py demo    # up, show the isolation and the S3 round trip from each node, down

What a worker node sees (see tests/cluster/README.md for why): the venv and protpeft's package directories — as a
cluster image with protpeft installed would have them — and nothing else of the worktree (configs, data, runs, the
MLflow store); a /tmp of its own (so pytest's tmp dirs and the driver's temp files are out of reach); not the
``shared/`` folder beside the worktree; not the driver-side directory ``<root>/driver`` nor the S3 server's data.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # siblings importable when run as a script

from processes import THROWAWAY_GRACE, PortBlock, ProcessGroup, stop_groups  # noqa: E402
from ray_nodes import (  # noqa: E402
    RayNode,
    api_server_env,
    node_env,
    start_head,
    start_worker_node,
    wait_head,
    wait_node_alive,
)
from seaweed import S3Settings, S3Store, start_s3_store  # noqa: E402

WORKTREE = Path(__file__).resolve().parents[2]
STATE_FILE = "cluster.json"
LAST_ROOT = Path(tempfile.gettempdir()) / "protpeft-cluster-last"
"""Where ``up`` notes its root, so that a bare ``down`` finds it."""

PORTS_PER_NODE = 60


def package_dirs() -> list[Path]:
    """Directories protpeft's packages are imported from (an editable install maps them into the worktree)."""
    import importlib.util

    names = ["protpeft", "protpeft.trainer", "protpeft.tune", "protpeft.registry", "protpeft.deploy"]
    found = []
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            found += [Path(p) for p in spec.submodule_search_locations]
    return found


def default_root() -> Path:
    """A short path (Ray's unix sockets live under it) outside /tmp, which worker nodes do not see."""
    base = Path(os.environ.get("PROTPEFT_CLUSTER_TMP", "/var/tmp"))
    return Path(tempfile.mkdtemp(prefix="ppc-", dir=base))


@dataclass
class LocalCluster:
    """A running cluster: its addresses, the S3 endpoint and credentials, a bucket, and its process groups."""

    root: Path
    token: str
    store: S3Store
    owns_store: bool
    head: RayNode
    nodes: dict[str, RayNode] = field(default_factory=dict)
    hide: list[Path] = field(default_factory=list)
    keep: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    # ---- addresses and environment ------------------------------------------------------------------------------
    @property
    def s3(self) -> S3Settings:
        return self.store.settings

    @property
    def bucket(self) -> str:
        return self.store.bucket

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.head.ports['port']}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.head.ports['dashboard-port']}"

    @property
    def driver_dir(self) -> Path:
        """A directory on the driver's side that no worker node can read."""
        return self.root / "driver"

    def env(self) -> dict[str, str]:
        """What a driver process needs: token auth with this cluster's token, and the S3 variables."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, **self.s3.env(),
                **api_server_env(self.head.ports["dashboard-port"])}  # fmt: skip

    # ---- nodes --------------------------------------------------------------------------------------------------
    def start_node(self, name: str, num_cpus: int | None = None, timeout: float = 120) -> RayNode:
        """Start a worker node with ``num_cpus`` (default 1), or a replacement for a lost one (same name, custom
        resource and CPUs; fresh ports and process group), and wait until it is ALIVE in the cluster."""
        lost = self.nodes.get(name)
        if lost is not None and lost.group.ours():
            raise RuntimeError(f"node {name} is still running")
        num_cpus = num_cpus or (int(lost.resources[name]) if lost else 1)
        t0 = time.monotonic()
        env = {**node_env(dict(os.environ), self.token), **api_server_env(self.head.ports["dashboard-port"])}
        node = start_worker_node(self.root, name, self.gcs_address, PortBlock(PORTS_PER_NODE), env, self.hide,
                                 self.keep, num_cpus)  # fmt: skip
        self.nodes[name] = node
        try:
            wait_node_alive(node, self.dashboard_url, self.token, timeout)
        except BaseException:
            node.group.stop()
            raise
        self.timings[f"{'replacement ' if lost else ''}node {name} joined (s)"] = round(time.monotonic() - t0, 1)
        self.save()
        return node

    def kill_node(self, name: str) -> None:
        """SIGKILL every process of the node at once (its raylet, agents and workers): a node lost, not drained."""
        self.nodes[name].group.kill()

    def stop(self) -> None:
        """Stop the worker nodes and the head side by side, then the S3 server if this cluster started it (each by its
        process group; see :data:`~processes.THROWAWAY_GRACE`), then remove the root."""
        stop_groups([*(node.group for node in self.nodes.values()), self.head.group], THROWAWAY_GRACE)
        if self.owns_store:
            self.store.stop()
        shutil.rmtree(self.root, ignore_errors=True)
        if LAST_ROOT.is_file() and LAST_ROOT.read_text().strip() == str(self.root):
            LAST_ROOT.unlink()

    # ---- state file (for `down` from another process) -----------------------------------------------------------
    def save(self) -> None:
        state = {
            "root": str(self.root), "token": self.token, "store": self.store.to_json(), "owns_store": self.owns_store,
            "head": self.head.to_json(),
            "nodes": {name: node.to_json() for name, node in self.nodes.items()},
            "hide": [str(p) for p in self.hide], "keep": [str(p) for p in self.keep], "timings": self.timings,
        }  # fmt: skip
        (self.root / STATE_FILE).write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, root: Path) -> LocalCluster:
        state = json.loads((root / STATE_FILE).read_text())
        return cls(
            Path(state["root"]), state["token"], S3Store.from_json(state["store"]), state["owns_store"],
            RayNode.from_json(state["head"]),
            {name: RayNode.from_json(node) for name, node in state["nodes"].items()},
            [Path(p) for p in state["hide"]], [Path(p) for p in state["keep"]], state["timings"],
        )  # fmt: skip


def start_cluster(
    nodes: dict[str, int] | None = None,
    extra_hide: list[Path] = (),
    root: Path | None = None,
    store: S3Store | None = None,
    bucket: str = "protpeft-test",
) -> LocalCluster:
    """Start an S3 server with ``bucket`` (unless ``store`` is given), a head with no CPUs, and worker nodes
    ``{name: num_cpus}`` (default ``nodeA`` and ``nodeB``, 1 CPU each); stops whatever it started if one of them
    fails to come up."""
    nodes = {"nodeA": 1, "nodeB": 1} if nodes is None else nodes
    root = root or default_root()
    for sub in ("driver", "logs", "ray"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    hide = [WORKTREE, Path(tempfile.gettempdir()), WORKTREE.parent / "shared", root / "driver", root / "s3"]
    if store is not None:
        hide.append(store.root)
    keep = [Path(sys.prefix), *package_dirs()]
    token = secrets.token_hex(32)
    started: list[ProcessGroup] = []
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    try:
        head = start_head(root, PortBlock(PORTS_PER_NODE), node_env(dict(os.environ), token))
        started.append(head.group)
        owns_store = store is None
        if owns_store:  # SeaweedFS comes up while the head does
            store = start_s3_store(root / "s3", bucket, root / "logs" / "seaweedfs.log")
            started.append(store.group)
            timings["s3 bucket created (s)"] = round(time.monotonic() - t0, 1)
        wait_head(head, token)
        timings["head ready (s)"] = round(time.monotonic() - t0, 1)
        cluster = LocalCluster(root, token, store, owns_store, head, {}, hide + list(extra_hide), keep, timings)
        cluster.save()
        for name, cpus in nodes.items():
            started.append(cluster.start_node(name, cpus).group)
        timings["cluster up (s)"] = round(time.monotonic() - t0, 1)
        cluster.save()
        LAST_ROOT.write_text(str(root))
        return cluster
    except BaseException:
        for group in reversed(started):
            group.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------------------------
# by hand


def _print_env(cluster: LocalCluster) -> None:
    print(f"# cluster root {cluster.root}; timings {cluster.timings}")
    print(f"export RAY_ADDRESS={cluster.gcs_address}")
    for key, value in cluster.env().items():
        print(f"export {key}={value}")
    print(f"# dashboard {cluster.dashboard_url}; bucket s3://{cluster.bucket}; stop: {sys.argv[0]} down")


def show_isolation(cluster: LocalCluster) -> None:
    """Write a file on the driver's side and an object to S3, then print what each worker node sees of both."""
    from probes import run_probe

    local = cluster.driver_dir / "pairs.tsv"
    local.write_text("a\tb\t1\n")
    key = f"{cluster.bucket}/demo/hello.txt"
    with cluster.s3.filesystem().open_output_stream(key) as stream:
        stream.write(b"written on the driver")
    paths = [local, WORKTREE / "pyproject.toml", Path(sys.executable)]
    for name, view in run_probe(cluster, sorted(cluster.nodes), paths, key).items():
        print(f"{name}: node {view['node_id'][:12]}, sees {view['exists']}, reads s3://{key} = {view['s3_text']!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "demo"])
    parser.add_argument("--root", type=Path, help="the cluster's root (down: default the last `up`)")
    args = parser.parse_args(argv)
    if args.command == "down":
        root = args.root or (Path(LAST_ROOT.read_text().strip()) if LAST_ROOT.is_file() else None)
        if root is None or not (root / STATE_FILE).is_file():
            print("no cluster state found (pass --root)", file=sys.stderr)
            return 1
        LocalCluster.load(root).stop()
        print(f"stopped the cluster in {root}")
        return 0
    from ray_nodes import namespace_probe

    refused = namespace_probe()
    if refused:
        print(refused, file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop what was started on SIGTERM as on Ctrl-C
    cluster = start_cluster(root=args.root)
    if args.command == "up":
        _print_env(cluster)
        return 0
    try:
        _print_env(cluster)
        show_isolation(cluster)
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
