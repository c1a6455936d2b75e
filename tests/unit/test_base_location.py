"""Where a run's base model is found again: the name the user gave is recorded beside the location training used,
and loading resolves it in one place (``protpeft.base_location``) with a one-line error that says how to pass
``--base``."""

from __future__ import annotations

from pathlib import Path

import pytest

from protpeft.artifact import RunArtifact
from protpeft.base_location import BASE_DIR_ENV, BaseModelNotFound, resolve_base
from protpeft.config import load_config

pytestmark = pytest.mark.unit

RAY_COPY = "/tmp/ray/session_1/runtime_resources/working_dir_files/_ray_pkg_0123/tiny-esm2"


def artifact(base_model: str, base_named: str | None, mode: str = "lora") -> RunArtifact:
    config = {"model": {"base": base_model, "base_named": base_named}} if base_named else {}
    return RunArtifact(
        task="ppi", mode=mode, base_model=base_model, base_fingerprint="abc123", label_names=("interacts",),
        pooling="mean", crop=64, head_hidden=8, config=config,
    )  # fmt: skip


def test_the_config_keeps_the_name_given_when_a_launch_resolves_the_path(tmp_path: Path) -> None:
    cfg = load_config(None, ["model.base=tiny-esm2"])
    assert cfg.model.base_named == "tiny-esm2"
    resolved = cfg.model_copy(update={"model": cfg.model.model_copy(update={"base": RAY_COPY})})  # as ray_launch
    assert resolved.model.base_named == "tiny-esm2"
    assert load_config(None, [f"model.base={RAY_COPY}", "model.base_named=tiny-esm2"]).model.base_named == "tiny-esm2"
    # a config dumped from an earlier run, its base then changed by the user: the new base is the name
    dumped = resolved.to_dict()
    dumped["model"]["base"] = "lab/esm2-other"
    from protpeft.config import config_from_dict

    assert config_from_dict(dumped).model.base_named == "lab/esm2-other"
    assert load_config(None, ["model.base=facebook/esm2_t6_8M_UR50D"]).model.base_named == "facebook/esm2_t6_8M_UR50D"


def test_the_artefact_reads_the_name_from_its_config_and_old_files_have_none() -> None:
    assert artifact(RAY_COPY, "tiny-esm2").base_named == "tiny-esm2"
    assert artifact("facebook/esm2_t6_8M_UR50D", None).base_named is None


def test_a_submitted_runs_base_is_found_relative_to_the_launch_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(BASE_DIR_ENV, raising=False)
    (tmp_path / "tiny-esm2").mkdir()
    run = artifact(RAY_COPY, "tiny-esm2")  # the job's temporary copy is gone
    assert resolve_base(run, workdir=tmp_path) == str(tmp_path / "tiny-esm2")
    monkeypatch.chdir(tmp_path)
    assert resolve_base(run) == str(tmp_path / "tiny-esm2")
    assert resolve_base(run, "/my/base") == "/my/base"  # --base wins, unchecked here (the fingerprint is, on load)
    assert resolve_base(artifact(RAY_COPY, "tiny-esm2", mode="full")) is None  # carries its own backbone


def test_the_recorded_location_comes_before_the_name(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(BASE_DIR_ENV, raising=False)
    (tmp_path / "used").mkdir()
    (tmp_path / "cwd" / "tiny-esm2").mkdir(parents=True)
    assert resolve_base(artifact(str(tmp_path / "used"), "tiny-esm2"), workdir=tmp_path / "cwd") == str(
        tmp_path / "used"
    )


def test_a_lab_directory_of_base_models_is_searched_by_name(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "bases" / "tiny-esm2").mkdir(parents=True)
    monkeypatch.setenv(BASE_DIR_ENV, str(tmp_path / "bases"))
    assert resolve_base(artifact(RAY_COPY, "models/tiny-esm2"), workdir=tmp_path) == str(
        tmp_path / "bases" / "tiny-esm2"
    )


def test_a_hub_id_stays_a_hub_id(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(BASE_DIR_ENV, raising=False)
    hub = "facebook/esm2_t6_8M_UR50D"
    assert resolve_base(artifact(hub, hub), workdir=tmp_path) == hub
    assert resolve_base(artifact(hub, None), workdir=tmp_path) == hub  # a file from before the name was recorded


@pytest.mark.parametrize(
    ("base_model", "base_named", "expected"),
    [
        (RAY_COPY, "tiny-esm2", r"'tiny-esm2' not found \(it trained from '/tmp/ray/.*', which is gone\); run from"),
        ("/gone/esm2-tiny", None, r"'/gone/esm2-tiny' not found; pass --base"),
        (RAY_COPY, "build/tiny-esm2", r"'build/tiny-esm2' not found .* holding 'tiny-esm2'"),
    ],
)
def test_a_missing_base_is_one_line_saying_how_to_pass_it(
    base_model: str, base_named: str | None, expected: str, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.delenv(BASE_DIR_ENV, raising=False)
    with pytest.raises(BaseModelNotFound, match=expected) as caught:
        resolve_base(artifact(base_model, base_named), workdir=tmp_path, source="runs/x")
    message = str(caught.value)
    assert message.startswith("runs/x: base model") and "\n" not in message
    assert "--base <directory or hub id>" in message and "fingerprint abc123" in message and BASE_DIR_ENV in message
