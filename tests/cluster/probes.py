"""A driver for the local cluster, run in a fresh interpreter (``python tests/cluster/probes.py '<json>'`` with
RAY_ADDRESS and the token variables set): one task pinned to each named worker node reports what that node sees.

It runs as ``__main__`` on purpose: cloudpickle ships ``__main__``'s functions by value, whereas a function of an
importable test module travels by reference and the worker node — which cannot see tests/ — could not import it.
Prints one JSON line: ``{node name: view}`` (see :func:`node_view`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path


def node_view(paths: list[str], s3: dict[str, str], key: str) -> dict:
    """On the node: its id, which of ``paths`` exist, the text of S3 object ``key``, where protpeft imports from."""
    import importlib

    import ray
    from pyarrow.fs import S3FileSystem

    scheme, host = s3["endpoint"].split("://", 1)
    fs = S3FileSystem(endpoint_override=host, scheme=scheme, access_key=s3["access_key"], secret_key=s3["secret_key"],
                      region=s3["region"])  # fmt: skip
    with fs.open_input_stream(key) as stream:
        text = stream.read().decode()
    try:
        protpeft = importlib.import_module("protpeft.trainer").__file__
    except ImportError as error:
        protpeft = f"ImportError: {error}"
    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "exists": {p: os.path.exists(p) for p in paths},
        "s3_text": text,
        "protpeft.trainer": protpeft,
        "cwd": os.getcwd(),
    }


def main(request: dict) -> dict[str, dict]:
    import ray

    ray.init(address=os.environ["RAY_ADDRESS"], logging_level="WARNING")
    remote = ray.remote(node_view)
    args = (request["paths"], request["s3"], request["key"])
    refs = {name: remote.options(num_cpus=0, resources={name: 0.01}).remote(*args) for name in request["nodes"]}
    views = {name: ray.get(ref, timeout=120) for name, ref in refs.items()}
    ray.shutdown()
    return views


def run_probe(cluster, nodes: list[str], paths: list[Path], key: str) -> dict[str, dict]:
    """What each of ``nodes`` sees, from a driver in a fresh interpreter connected to ``cluster`` (a LocalCluster)."""
    request = {"nodes": nodes, "paths": [str(p) for p in paths], "s3": asdict(cluster.s3), "key": key}
    env = {**os.environ, **cluster.env(), "RAY_ADDRESS": cluster.gcs_address}
    done = subprocess.run([sys.executable, __file__, json.dumps(request)], env=env, capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"probe driver failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
