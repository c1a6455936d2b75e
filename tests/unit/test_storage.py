"""RunStorage without an object store: naming, S3 settings from the environment, local directories end to end, and
the errors a user sees before any work (S3 round trips against a real server: tests/cluster/test_s3_storage.py)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from protpeft.errors import ProtpeftError
from protpeft.trainer.ray_cluster import free_port
from protpeft.trainer.storage import RunStorage, StorageError, s3_filesystem

pytestmark = pytest.mark.unit

S3_ENV = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret"}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"hidden": 64}')
    (src / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 4)
    return src


def test_local_paths_resolve_and_need_no_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    for given in ("runs/x", str(tmp_path / "runs" / "x"), f"file://{tmp_path}/runs/x", tmp_path / "runs" / "x"):
        storage = RunStorage.parse(given)
        assert storage.is_local and storage.bucket is None
        assert storage.uri == storage.root == str(tmp_path / "runs" / "x")
        assert storage.for_ray() == {"storage_path": storage.root, "storage_filesystem": storage.filesystem}
    assert storage.uri_of("ckpt/1") == str(tmp_path / "runs" / "x" / "ckpt" / "1")


def test_s3_uri_names_bucket_prefix_and_endpoint_from_env() -> None:
    storage = RunStorage.parse("s3://bucket/some/prefix/", S3_ENV)
    assert not storage.is_local and storage.bucket == "bucket"
    assert storage.uri == "s3://bucket/some/prefix" and storage.root == "bucket/some/prefix"
    assert storage.uri_of("run/a.txt") == "s3://bucket/some/prefix/run/a.txt"
    assert storage.for_ray()["storage_path"] == "bucket/some/prefix"  # scheme stripped, as Ray wants with a filesystem
    assert isinstance(storage.filesystem, pafs.S3FileSystem)
    # the credentials travel with the filesystem (workers may have no AWS variables)
    assert b"secret" in pickle.dumps(storage.filesystem)
    assert RunStorage.parse("s3://bucket", S3_ENV).root == "bucket"


@pytest.mark.parametrize(
    ("location", "env", "message"),
    [
        ("gs://bucket/x", S3_ENV, "unsupported scheme gs://"),
        ("s3://", S3_ENV, "name a bucket"),
        ("s3:///prefix", S3_ENV, "name a bucket"),
        ("s3://b/x", {**S3_ENV, "AWS_ENDPOINT_URL": "127.0.0.1:9000"}, "AWS_ENDPOINT_URL=127.0.0.1:9000 is not an"),
        ("s3://b/x", {"AWS_ACCESS_KEY_ID": "key"}, "AWS_SECRET_ACCESS_KEY is not set"),
    ],
)
def test_bad_names_fail_with_one_line(location: str, env: dict, message: str) -> None:
    with pytest.raises(StorageError, match=message) as caught:
        RunStorage.parse(location, env)
    assert isinstance(caught.value, ProtpeftError) and "\n" not in str(caught.value)


def test_endpoint_url_s3_wins_and_scheme_follows_the_url() -> None:
    shipped = pickle.dumps(s3_filesystem({**S3_ENV, "AWS_ENDPOINT_URL_S3": "https://s3.example.org:8443"}))
    assert b"s3.example.org:8443" in shipped and b"https" in shipped and b"127.0.0.1" not in shipped
    assert isinstance(pickle.loads(shipped), pafs.S3FileSystem)  # a usable copy, as on a worker


def test_paths_cannot_leave_the_location() -> None:
    with pytest.raises(StorageError, match="leaves"):
        RunStorage.parse("s3://b/p", S3_ENV).path("../other")


def test_local_round_trip_and_staging(tmp_path: Path, model_dir: Path) -> None:
    storage = RunStorage.parse(tmp_path / "store")
    storage.check()
    assert storage.upload_dir(model_dir, "runs/r1") == str(tmp_path / "store" / "runs" / "r1")
    assert storage.exists("runs/r1/sub/weights.bin") and not storage.exists("runs/r2")
    back = storage.download_dir("runs/r1", tmp_path / "back")
    assert _tree(back) == _tree(model_dir)

    uri = storage.stage_dir(model_dir, "fp123")
    assert _tree(Path(uri)) == {**_tree(model_dir), ".protpeft-staged": b"fp123"}
    (model_dir / "config.json").write_text("changed")  # same key: already staged, not uploaded again
    assert storage.stage_dir(model_dir, "fp123") == uri
    assert (Path(uri) / "config.json").read_text() == '{"hidden": 64}'
    with pytest.raises(StorageError, match="one path component"):
        storage.stage_dir(model_dir, "a/b")


def test_download_of_a_missing_directory_names_it(tmp_path: Path) -> None:
    storage = RunStorage.parse(tmp_path / "store")
    with pytest.raises(StorageError, match=r"store/runs/none: no such directory"):
        storage.download_dir("runs/none", tmp_path / "back")


def test_unwritable_local_storage_fails_the_check(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="is not a writable directory") as caught:
        RunStorage.parse(tmp_path / "file" / "runs").check()
    assert "\n" not in str(caught.value)


def test_unreachable_endpoint_fails_the_check_fast() -> None:
    port = free_port()  # nobody listens there
    env = {**S3_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    with pytest.raises(StorageError, match=rf"cannot reach the S3 endpoint http://127.0.0.1:{port}; set AWS_END"):
        RunStorage.parse("s3://bucket/p", env).check(env)
