"""An experiment kept in storage, without Ray: protpeft's files copied there as they are written, an experiment
found again from storage alone once its local directory is gone, finished trials' run directories pulled back, and
the places Ray Tune is given. (The whole round trip through Ray Tune on S3: tests/cluster/test_cluster_tune.py.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml

from protpeft.errors import ProtpeftError
from protpeft.tune.experiment import _prepare
from protpeft.tune.experiment_files import (
    ATTEMPTS_FILE,
    ENDS_FILE,
    SEARCH_FILE,
    TUNER_FILE,
    ExperimentFiles,
    read_json,
)
from protpeft.tune.outcome import bring_home

pytestmark = pytest.mark.unit


@pytest.fixture
def tune_file(tmp_path: Path, tiny_model: Path, small_ppi: dict) -> Path:
    config = {
        "task": "ppi",
        "mode": "lora",
        "model": {"base": str(tiny_model)},
        "data": {"pairs": str(small_ppi["pairs"]), "sequences": str(small_ppi["sequences"])},
        "tracking": {"mlflow": False},
    }
    spec = {"config": config, "storage": str(tmp_path / "experiments"), "name": "exp",
            "search": {"algorithm": "grid"}, "space": {"optim.lr": {"grid": [1e-3, 1e-2]}}}  # fmt: skip
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_files_are_copied_to_storage_and_missing_ones_come_back(tmp_path: Path) -> None:
    files = ExperimentFiles.at(tmp_path / "local" / "exp", str(tmp_path / "store"))
    assert files.where == str(tmp_path / "store" / "exp")
    files.write(ENDS_FILE, {"t1": "complete"})
    (files.local / ATTEMPTS_FILE).write_text('{"trial_id": "t1"}\n')
    files.upload(ATTEMPTS_FILE, "no-such-file.json")  # what is not there is skipped
    assert (tmp_path / "store" / "exp" / "protpeft" / ENDS_FILE).is_file() and files.stored(ATTEMPTS_FILE)
    (files.local / ATTEMPTS_FILE).write_text("newer, here\n")
    (files.local / ENDS_FILE).unlink()
    files.download_missing()
    assert read_json(files.local / ENDS_FILE, None) == {"t1": "complete"}  # missing here: from storage
    assert (files.local / ATTEMPTS_FILE).read_text() == "newer, here\n"  # here: kept


def test_tune_and_train_places_with_and_without_a_storage(tmp_path: Path) -> None:
    kept = ExperimentFiles.at(tmp_path / "exp", str(tmp_path / "store"))
    assert kept.tune_location() == {"name": "exp", "storage_path": str(tmp_path / "store"),
                                    "storage_filesystem": kept.storage.filesystem}  # fmt: skip
    assert kept.tune_restore()["path"] == str(tmp_path / "store" / "exp")
    assert kept.train_storage().uri == str(tmp_path / "store" / "exp" / "train")
    here = ExperimentFiles.at(tmp_path / "exp", None)
    assert here.tune_location() == {"name": "exp", "storage_path": str(tmp_path)}
    assert here.tune_restore() == {"path": str(tmp_path / "exp")}
    assert here.train_storage().uri == str(tmp_path / "exp" / "train")
    assert isinstance(here.train_storage().filesystem, pafs.LocalFileSystem)


def test_an_experiment_in_storage_resumes_without_its_local_directory(tune_file: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    search, files, state = _prepare(tune_file, resume=False, storage=str(store))
    exp_dir = tmp_path / "experiments" / "exp"
    assert files.local == exp_dir and files.storage.uri == str(store / "exp")
    assert search.base["engine"]["storage"] == str(store)
    assert read_json(store / "exp" / "protpeft" / SEARCH_FILE, None) == read_json(exp_dir / SEARCH_FILE, None)
    with pytest.raises(ProtpeftError, match="nothing to resume"):  # Ray Tune never started it
        _prepare(exp_dir, resume=True, storage=str(store))
    (store / "exp" / TUNER_FILE).write_bytes(b"")  # as Tune writes it when the experiment starts

    shutil.rmtree(exp_dir)
    with pytest.raises(ProtpeftError, match=r"nothing to resume at .*exp: .* resumes with --storage s3://"):
        _prepare(exp_dir, resume=True, storage=None)  # no directory here, and no storage named
    resumed, again, saved = _prepare(exp_dir, resume=True, storage=str(store))
    assert again == files and saved["search"] == state["search"] and resumed.to_dict() == search.to_dict()
    assert (exp_dir / SEARCH_FILE).is_file()  # brought back
    resumed, again, _ = _prepare(tune_file, resume=True, storage=None)  # the local copy now names the storage
    assert again.storage.uri == str(store / "exp")
    shutil.rmtree(exp_dir)
    with pytest.raises(ProtpeftError, match=rf"experiment {store / 'exp'} exists: continue it with --resume"):
        _prepare(tune_file, resume=False, storage=str(store))


def test_finished_trials_missing_here_are_pulled_from_their_artefacts(tmp_path: Path) -> None:
    files = ExperimentFiles.at(tmp_path / "exp", str(tmp_path / "store"))
    artifact = tmp_path / "store" / "exp" / "train" / "train-trial_id=t1" / "artifact"
    artifact.mkdir(parents=True)
    (artifact / "protpeft.json").write_text("{}")
    (artifact / "head.safetensors").write_bytes(b"weights")
    rows = [
        {"trial_id": "t1", "state": "FINISHED", "run_dir": "/another/machine/trials/trial-t1"},
        {"trial_id": "t2", "state": "INTERRUPTED", "run_dir": None},
    ]
    bring_home(rows, files)
    run_dir = tmp_path / "exp" / "trials" / "trial-t1"
    assert rows[0]["run_dir"] == str(run_dir) and rows[1]["run_dir"] is None
    assert (run_dir / "head.safetensors").read_bytes() == b"weights"
    (run_dir / "head.safetensors").write_bytes(b"trained here")
    bring_home(rows, files)  # a run directory that is here is left as it is
    assert (run_dir / "head.safetensors").read_bytes() == b"trained here"
