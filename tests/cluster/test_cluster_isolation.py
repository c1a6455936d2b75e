"""The local cluster is shared-nothing: worker nodes cannot read the driver's files, and reach data only through the
S3 server."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
from local_cluster import WORKTREE
from probes import run_probe

pytestmark = pytest.mark.cluster


def test_worker_nodes_see_no_driver_file_but_read_s3(local_cluster, tmp_path: Path) -> None:
    in_pytest_tmp = tmp_path / "pairs.tsv"
    in_driver_dir = local_cluster.driver_dir / "sequences.fasta"
    for path in (in_pytest_tmp, in_driver_dir):
        path.write_text("driver-only\n")
    hidden = [in_pytest_tmp, in_driver_dir, WORKTREE / "pyproject.toml", WORKTREE / "configs"]
    assert all(p.exists() for p in hidden)  # the driver sees them all
    key = f"{local_cluster.bucket}/isolation/{uuid.uuid4().hex}.txt"
    text = f"written on the driver {uuid.uuid4().hex}"
    with local_cluster.s3.filesystem().open_output_stream(key) as stream:
        stream.write(text.encode())

    views = run_probe(local_cluster, ["nodeA", "nodeB"], [*hidden, Path(sys.executable)], key)

    assert views["nodeA"]["node_id"] != views["nodeB"]["node_id"]
    for name, view in views.items():
        assert view["exists"] == {**{str(p): False for p in hidden}, sys.executable: True}, name
        assert view["s3_text"] == text, name
        # protpeft is installed on every node (its package directories stay visible), like a cluster image
        assert view["protpeft.trainer"].endswith("__init__.py"), (name, view["protpeft.trainer"])
