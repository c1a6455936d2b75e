"""A version's metrics come from its MLflow run: a run that is gone means no metrics, a broken store is an error.

Real SQLite stores (MLflow's own client and schema), built once and copied per test.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from protpeft.registry import RegistryError, get_version, list_versions

pytestmark = pytest.mark.unit

GONE_RUN = "0" * 32
"""A run id the store never held, as for a version whose run was deleted for good (``mlflow gc``)."""


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A store with model ``m``: version 1 from a run that no longer exists, version 2 from a run with metrics."""
    from protpeft.registry import store

    db = tmp_path_factory.mktemp("template-store") / "mlflow.db"
    client = store.client(f"sqlite:///{db}")
    run = client.create_run(store.ensure_experiment(client, "protpeft"))
    client.log_metric(run.info.run_id, "final_val_aupr", 0.75)
    client.log_metric(run.info.run_id, "params_trainable", 1234)
    client.create_registered_model("m")
    client.create_model_version("m", source=str(db.parent / "gone"), run_id=GONE_RUN)
    client.create_model_version("m", source=str(db.parent / "kept"), run_id=run.info.run_id)
    return db, run.info.run_id


@pytest.fixture
def store_copy(template_db: tuple[Path, str], tmp_path: Path) -> tuple[str, Path, str]:
    db, run_id = template_db
    copy = tmp_path / "mlflow.db"
    shutil.copyfile(db, copy)
    return f"sqlite:///{copy}", copy, run_id


def test_a_version_whose_run_is_gone_has_no_metrics(store_copy: tuple[str, Path, str]) -> None:
    uri, _, run_id = store_copy
    gone, kept = list_versions("m", tracking_uri=uri)
    assert (gone.run_id, gone.metrics, gone.costs) == (GONE_RUN, {}, {})
    assert (kept.run_id, kept.metrics, kept.costs) == (run_id, {"val_aupr": 0.75}, {"params_trainable": 1234})


def test_a_store_that_cannot_be_read_is_an_error_not_missing_metrics(store_copy: tuple[str, Path, str]) -> None:
    uri, db, run_id = store_copy
    with sqlite3.connect(db) as broken:  # the run exists, its metrics cannot be read
        broken.execute("DROP TABLE latest_metrics")
    with pytest.raises(RegistryError) as info:
        get_version("m/2", tracking_uri=uri)
    message = str(info.value)
    assert run_id in message and "no such table: latest_metrics" in message and len(message.splitlines()) == 1
