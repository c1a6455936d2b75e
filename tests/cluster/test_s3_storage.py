"""RunStorage against a real S3 server (SeaweedFS): round trip, staging, and the three bad settings a user can give
(wrong endpoint, wrong key, missing bucket), each a one-line error before any work."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from protpeft.trainer.ray_cluster import free_port
from protpeft.trainer.storage import RunStorage, StorageError

pytestmark = pytest.mark.cluster


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def prefix(s3_store) -> str:
    return f"s3://{s3_store.bucket}/{uuid.uuid4().hex[:8]}"


def test_round_trip_and_staging_through_s3(s3_store, prefix: str, tmp_path: Path) -> None:
    env = s3_store.settings.env()
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"layers": 4}')
    (model / "sub" / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    storage = RunStorage.parse(prefix, env)
    storage.check(env)

    assert storage.upload_dir(model, "runs/r1") == f"{prefix}/runs/r1"
    assert storage.exists("runs/r1/sub/model.safetensors") and not storage.exists("runs/r2")
    # a fresh RunStorage (another process, another machine) reads it back
    assert _tree(RunStorage.parse(prefix, env).download_dir("runs/r1", tmp_path / "back")) == _tree(model)

    uri = storage.stage_dir(model, "fp-abc")
    assert uri == f"{prefix}/staged/fp-abc" and storage.exists("staged/fp-abc/.protpeft-staged")
    (model / "config.json").write_text("edited")  # same fingerprint: left as staged
    assert storage.stage_dir(model, "fp-abc") == uri
    assert (storage.download_dir("staged/fp-abc", tmp_path / "staged") / "config.json").read_text() == '{"layers": 4}'


def test_bad_settings_fail_the_check_in_one_line(s3_store, prefix: str) -> None:
    good = s3_store.settings.env()
    cases = {
        "endpoint": ({**good, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}, prefix, "cannot reach"),
        "key": ({**good, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}, prefix, "refused the credentials"),
        "bucket": (good, "s3://no-such-bucket/p", "bucket no-such-bucket does not exist"),
    }
    for case, (env, location, expected) in cases.items():
        with pytest.raises(StorageError) as caught:
            RunStorage.parse(location, env).check(env)
        message = str(caught.value)
        assert expected in message and "\n" not in message, (case, message)
        assert message.startswith(f"storage {location}: ") and ("AWS_" in message or "--storage" in message), message
        # nothing chained: the CLI prints this line alone, no AWS SDK detail and no second traceback
        error = caught.value
        assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
