"""Where a run's data lives: a local directory, a directory of a shared filesystem, or an object-store prefix
(``s3://bucket/prefix``), named once as a :class:`RunStorage`.

It hands Ray Train what its ``RunConfig(storage_path=..., storage_filesystem=...)`` takes (a pyarrow filesystem and a
path on it), checks the location before any work starts, and copies whole directories either way with
``pyarrow.fs.copy_files`` — the same machinery Ray Train persists checkpoints with.

For S3 the endpoint and the credentials come from the standard variables, as boto reads them: ``AWS_ENDPOINT_URL_S3``
or ``AWS_ENDPOINT_URL`` (``http://host:port`` for a self-hosted store; unset for AWS), ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``. They are read on the
driver and passed to the filesystem explicitly, so the filesystem object carries them when Ray ships it to worker
nodes, which may have no such variables (pyarrow's own lookup would happen on each node). Without the key variables
pyarrow's default chain applies (``~/.aws``, instance metadata).
"""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from protpeft.errors import ProtpeftError

__all__ = ["RunStorage", "StorageError", "s3_filesystem"]

STAGED_MARKER = ".protpeft-staged"
"""Written last into a staged directory: its presence means the whole directory is there."""

CHECK_TIMEOUT_S = 5.0


class StorageError(ProtpeftError):
    """A storage location that cannot be used as given; the message says what to pass instead."""


def _endpoint(env: Mapping[str, str]) -> tuple[str | None, str]:
    """``(endpoint_override, scheme)`` from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (AWS itself when unset)."""
    name = "AWS_ENDPOINT_URL_S3" if env.get("AWS_ENDPOINT_URL_S3") else "AWS_ENDPOINT_URL"
    url = env.get(name)
    if not url:
        return None, "https"
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path not in ("", "/"):
        raise StorageError(f"{name}={url} is not an endpoint URL: pass http://HOST:PORT or https://HOST[:PORT]")
    return parsed.netloc, parsed.scheme


def s3_filesystem(env: Mapping[str, str] | None = None, *, quick: bool = False) -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem configured from the standard AWS variables of ``env`` (default ``os.environ``).
    ``quick``: short timeouts and one attempt, for checks that must fail fast on an unreachable endpoint."""
    env = os.environ if env is None else env
    endpoint, scheme = _endpoint(env)
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if bool(key) != bool(secret):
        missing = "AWS_SECRET_ACCESS_KEY" if key else "AWS_ACCESS_KEY_ID"
        raise StorageError(f"{missing} is not set: set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or ("us-east-1" if endpoint else None)
    extra = {}
    if quick:
        extra = {
            "connect_timeout": CHECK_TIMEOUT_S,
            "request_timeout": CHECK_TIMEOUT_S,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=1),
        }
    return pafs.S3FileSystem(
        access_key=key or None,
        secret_key=secret or None,
        session_token=env.get("AWS_SESSION_TOKEN") or None,
        region=region,
        endpoint_override=endpoint,
        scheme=scheme,
        **extra,
    )


@dataclass(frozen=True)
class RunStorage:
    """A storage location: ``uri`` as the user would name it again (an absolute path, or ``s3://bucket/prefix``),
    the pyarrow ``filesystem``, and ``root``, the location's path on that filesystem."""

    uri: str
    filesystem: pafs.FileSystem
    root: str

    @classmethod
    def parse(cls, location: str | os.PathLike, env: Mapping[str, str] | None = None) -> RunStorage:
        """A local or shared-filesystem path (relative to the current directory; ``file://`` accepted) or an
        ``s3://bucket[/prefix]`` URI. Nothing is contacted yet: see :meth:`check`."""
        text = str(location)
        scheme = urlparse(text).scheme if "://" in text else ""
        if scheme in ("", "file"):
            path = Path(text.removeprefix("file://")).expanduser().resolve()
            return cls(str(path), pafs.LocalFileSystem(), str(path))
        if scheme != "s3":
            raise StorageError(
                f"storage {text}: unsupported scheme {scheme}://; pass a directory or s3://BUCKET/PREFIX"
            )
        root = text[len("s3://") :].rstrip("/")
        if not root or root.startswith("/") or "//" in root:
            raise StorageError(f"storage {text}: name a bucket, as s3://BUCKET or s3://BUCKET/PREFIX")
        return cls(f"s3://{root}", s3_filesystem(env), root)

    # ---- naming -------------------------------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        """A directory of this machine's filesystem (a shared one looks the same: only the user knows it is shared)."""
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    @property
    def bucket(self) -> str | None:
        return None if self.is_local else self.root.split("/", 1)[0]

    def path(self, rel: str = "") -> str:
        """``rel`` (a relative POSIX path, no ``..``) on the filesystem."""
        rel = rel.strip("/")
        if ".." in rel.split("/"):
            raise StorageError(f"storage path {rel!r} leaves {self.uri}")
        return posixpath.join(self.root, rel) if rel else self.root

    def uri_of(self, rel: str = "") -> str:
        return self.path(rel) if self.is_local else f"s3://{self.path(rel)}"

    def child(self, rel: str) -> RunStorage:
        """The location ``rel`` inside this one, on the same filesystem (its credentials included)."""
        return RunStorage(self.uri_of(rel), self.filesystem, self.path(rel))

    def for_ray(self) -> dict[str, object]:
        """Keyword arguments for Ray Train's ``RunConfig``/Tune's ``RunConfig``: the path is already stripped of its
        scheme, as Ray requires when it is given the filesystem."""
        return {"storage_path": self.root, "storage_filesystem": self.filesystem}

    # ---- data ---------------------------------------------------------------------------------------------------
    def exists(self, rel: str = "") -> bool:
        return self.filesystem.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write (or replace) the file ``rel``; its directory is created as needed."""
        if self.is_local:
            Path(self.path(rel)).parent.mkdir(parents=True, exist_ok=True)
        with self.filesystem.open_output_stream(self.path(rel)) as stream:
            stream.write(data)

    def read_bytes(self, rel: str) -> bytes | None:
        """The file ``rel``'s content, or None when there is no such file."""
        if self.filesystem.get_file_info(self.path(rel)).type != pafs.FileType.File:
            return None
        with self.filesystem.open_input_stream(self.path(rel)) as stream:
            return stream.read()

    def remove(self, rel: str) -> None:
        """Delete the file or directory ``rel`` (recursively); nothing happens when it does not exist."""
        kind = self.filesystem.get_file_info(self.path(rel)).type
        if kind == pafs.FileType.Directory:
            self.filesystem.delete_dir(self.path(rel))
        elif kind != pafs.FileType.NotFound:
            self.filesystem.delete_file(self.path(rel))

    def upload_dir(self, local: str | os.PathLike, rel: str) -> str:
        """Copy the local directory ``local`` (recursively) to ``rel``; returns its URI."""
        if not Path(local).is_dir():
            raise StorageError(f"{local}: not a directory, nothing to upload")
        if self.is_local:
            Path(self.path(rel)).mkdir(parents=True, exist_ok=True)
        pafs.copy_files(
            str(Path(local).resolve()),
            self.path(rel),
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=self.filesystem,
        )
        return self.uri_of(rel)

    def download_dir(self, rel: str, local: str | os.PathLike) -> Path:
        """Copy the directory ``rel`` to the local directory ``local`` (created; files there are overwritten)."""
        if self.filesystem.get_file_info(self.path(rel)).type != pafs.FileType.Directory:
            raise StorageError(f"{self.uri_of(rel)}: no such directory in storage")
        Path(local).mkdir(parents=True, exist_ok=True)
        pafs.copy_files(
            self.path(rel),
            str(Path(local).resolve()),
            source_filesystem=self.filesystem,
            destination_filesystem=pafs.LocalFileSystem(),
        )
        return Path(local)

    def stage_dir(self, local_dir: str | os.PathLike, key: str, prefix: str = "staged") -> str:
        """Content-addressed copy of ``local_dir`` at ``<prefix>/<key>`` (``key``: its fingerprint), uploaded only
        when not already complete there; returns its URI. A marker written after the files tells a complete copy
        from one cut off midway (which is uploaded again, over itself)."""
        if not key or "/" in key or key in (".", ".."):
            raise StorageError(f"staging key {key!r} must be one path component (a fingerprint)")
        rel = f"{prefix.strip('/')}/{key}"
        if not self.exists(f"{rel}/{STAGED_MARKER}"):
            self.upload_dir(local_dir, rel)
            self.write_bytes(f"{rel}/{STAGED_MARKER}", key.encode())
        return self.uri_of(rel)

    # ---- checks -------------------------------------------------------------------------------------------------
    def check(self, env: Mapping[str, str] | None = None) -> None:
        """Fail with one clear line (:class:`StorageError`) unless the location can be read and written: local
        directory creatable and writable; S3 endpoint reachable, credentials accepted, bucket present. A probe object
        is written and deleted."""
        if self.is_local:
            self._check_local()
        else:
            self._check_s3(env)

    def _check_local(self) -> None:
        probe = Path(self.root) / f".protpeft-check-{uuid.uuid4().hex}"
        try:
            Path(self.root).mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise StorageError(
                f"storage {self.uri} is not a writable directory ({error.strerror or error}): "
                "pass a directory you can write to"
            ) from None

    def _check_s3(self, env: Mapping[str, str] | None) -> None:
        env = os.environ if env is None else env
        endpoint, scheme = _endpoint(env)
        where = f"{scheme}://{endpoint}" if endpoint else "AWS S3"
        fs = s3_filesystem(env, quick=True)
        probe = self.path(f".protpeft-check-{uuid.uuid4().hex}")
        try:
            missing = fs.get_file_info(self.bucket).type == pafs.FileType.NotFound
            if not missing:
                with fs.open_output_stream(probe) as stream:
                    stream.write(b"")
                fs.delete_file(probe)
        except OSError as error:
            raise StorageError(_explain_s3_error(self.uri, where, error)) from None
        if missing:
            raise StorageError(
                f"storage {self.uri}: bucket {self.bucket} does not exist on {where}; create it "
                "(e.g. `aws s3 mb s3://BUCKET`) or pass --storage s3://EXISTING-BUCKET/PREFIX"
            )


def _explain_s3_error(uri: str, endpoint: str, error: OSError) -> str:
    """One line for an S3 failure: pyarrow's message is several lines of AWS SDK detail."""
    text = str(error)
    if any(mark in text for mark in ("NETWORK_CONNECTION", "curlCode", "Couldn't connect", "Could not resolve")):
        return (
            f"storage {uri}: cannot reach the S3 endpoint {endpoint}; set AWS_ENDPOINT_URL to the object store's "
            "URL (http://HOST:PORT), or unset it for AWS"
        )
    denied = (
        "ACCESS_DENIED",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "HTTP response code: 403",
    )
    if any(mark in text for mark in denied):
        return (
            f"storage {uri}: {endpoint} refused the credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "to a key that may read and write this bucket"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return f"storage {uri}: {first}"
