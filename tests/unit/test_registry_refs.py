"""The one parser of registered-model references, and the store locations derived from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from protpeft.errors import ProtpeftError
from protpeft.registry.refs import ModelRef, RegistryError, parse_ref

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "expected", "canonical"),
    [
        ("ppi-lora", ModelRef("ppi-lora"), "ppi-lora"),
        ("ppi-lora@champion", ModelRef("ppi-lora", alias="champion"), "ppi-lora@champion"),
        ("ppi-lora/3", ModelRef("ppi-lora", version=3), "ppi-lora/3"),
        ("models:/ppi-lora@champion", ModelRef("ppi-lora", alias="champion"), "ppi-lora@champion"),
        ("models:/ppi.v2_x/12", ModelRef("ppi.v2_x", version=12), "ppi.v2_x/12"),
        ("  demo-ppi/latest ", ModelRef("demo-ppi"), "demo-ppi"),
    ],
)
def test_parse_ref_accepts_every_documented_form(text: str, expected: ModelRef, canonical: str) -> None:
    ref = parse_ref(text)
    assert ref == expected
    assert str(ref) == canonical
    assert parse_ref(str(ref)) == ref  # round trip
    assert parse_ref(ref) is ref


def test_ref_uri_is_what_mlflow_tools_accept() -> None:
    assert parse_ref("ppi@champion").uri == "models:/ppi@champion"
    assert parse_ref("ppi/2").uri == "models:/ppi/2"
    assert parse_ref("ppi").uri == "models:/ppi/latest"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty model reference"),
        ("models:/", "empty model reference"),
        ("ppi@", "expected NAME, NAME@ALIAS"),
        ("ppi@a@b", "expected NAME, NAME@ALIAS"),
        ("ppi/0", "version must be a positive number"),
        ("ppi/two", "version must be a positive number"),
        ("ppi/²", "version must be a positive number"),
        ("ppi/99999999999999999999", "version must be a positive number"),
        ("ppi/2/3", "not a model reference"),
        ("/no/such/dir", "not a model reference"),
        ("runs/a/b", "not a model reference"),
        ("ppi@v3", "reserved by MLflow"),
        ("ppi@latest", "reserved by MLflow"),
        ("ppi@has space", "invalid alias"),
        ("-ppi", "invalid model name"),
        ("pp i", "invalid model name"),
    ],
)
def test_parse_ref_rejects_malformed_references_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        parse_ref(text)


def test_registry_errors_are_user_errors() -> None:
    assert issubclass(RegistryError, ProtpeftError)  # the CLI prints them as one line, exit code 2
    with pytest.raises(RegistryError, match="not both"):
        ModelRef("ppi", alias="champion", version=2)


def test_store_locations_follow_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from protpeft.registry import store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PROTPEFT_HOME", str(tmp_path))
    uri = store.tracking_uri()
    assert uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert store.sqlite_path(uri) == tmp_path / "mlflow.db"
    assert store.artifact_root(uri) == tmp_path / "mlartifacts"  # absolute, independent of the working directory

    monkeypatch.delenv("PROTPEFT_HOME")
    monkeypatch.chdir(tmp_path)
    assert store.tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert store.tracking_uri() == "http://127.0.0.1:5000"
    assert store.artifact_root(store.tracking_uri()) is None  # the server decides
    assert store.sqlite_path("sqlite:///relative/x.db") == Path("relative/x.db").resolve()


def test_importing_the_registry_does_not_import_mlflow_or_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, protpeft.registry, protpeft.registry.cli; print(sorted({'mlflow', 'torch'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
