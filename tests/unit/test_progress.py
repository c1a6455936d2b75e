"""Progress read from a run's ``metrics.jsonl`` (step / total, loss, last validation metric, ETA), and the console
settings that keep Ray's own lines out of the default view."""

from __future__ import annotations

import io
import json
import logging
import os
import time
from pathlib import Path

import pytest
from rich.console import Console

from protpeft.console import VERBOSE_ENV, set_verbosity, verbosity
from protpeft.progress import RunProgress, follow_run, format_duration, planned_steps, progress_line
from protpeft.trainer.ray_cluster import ray_output

pytestmark = pytest.mark.unit


def append(path: Path, *records: dict, tail: str = "") -> None:
    with path.open("a") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_follows_appends_and_reads_a_line_once_it_is_whole(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    progress = RunProgress(path, total=100, since=1000.0)
    assert not progress.poll() and progress.cells() == {"step": "0/100", "loss": "", "val": "", "eta": ""}
    append(path, {"step": 10, "time": 1010.0, "train_loss": 0.7}, tail='{"step": 20, "time": 10')
    assert progress.poll()
    assert (progress.step, progress.loss, progress.value) == (10, 0.7, None)
    with path.open("a") as fh:
        fh.write('20.0, "train_loss": 0.5}\n')
    append(path, {"step": 20, "time": 1021.0, "val_aupr": 0.8125, "val_loss": 0.4})
    assert progress.poll() and not progress.poll()
    assert (progress.step, progress.loss, progress.value, progress.records) == (20, 0.5, 0.8125, 3)
    cells = progress.cells()
    assert cells["step"] == "20/100" and cells["loss"] == "0.5000" and cells["val"] == "0.8125"
    assert progress.eta_s == 0.0  # 80 steps at 10 per 11 s take 88 s, long past since the last record


def test_eta_from_the_rate_since_the_first_record() -> None:
    now = time.time()
    progress = RunProgress(Path("unused"), total=100, since=now - 100)
    progress.update({"step": 10, "time": now - 20})
    assert progress.eta_s is None  # one record: no rate yet
    progress.update({"step": 30, "time": now})
    assert progress.eta_s == pytest.approx(70.0, abs=0.5)  # 20 steps / 20 s, 70 steps left
    progress.update({"step": 100, "time": now})
    assert progress.eta_s == 0.0 and progress.cells()["eta"] == "0:00"


def test_records_of_an_earlier_run_are_skipped_and_a_replaced_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    append(path, {"step": 50, "time": 10.0, "train_loss": 9.0})  # an earlier run of the same name
    progress = RunProgress(path, total=60, since=20.0)
    assert not progress.poll() and progress.step == 0
    path.unlink()  # a fresh start clears the run directory, then the new run writes its own file
    append(path, {"step": 5, "time": 30.0, "train_loss": 0.6})
    assert progress.poll() and (progress.step, progress.loss) == (5, 0.6)


def test_one_progress_line_and_durations() -> None:
    progress = RunProgress(Path("unused"), total=260, metric="val_aupr", since=0.0)
    progress.update({"step": 120, "time": 1.0, "train_loss": 0.41234})
    progress.update({"step": 120, "time": 1.0, "val_aupr": 0.8})
    assert progress_line("demo", progress) == "demo  step 120/260  loss 0.4123  val_aupr 0.8000  ETA —"
    assert [format_duration(s) for s in (None, 0, 75, 3725)] == ["—", "0:00", "1:15", "1:02:05"]


def test_follow_run_shows_the_last_line_when_the_block_ends(tmp_path: Path) -> None:
    out = io.StringIO()
    console = Console(file=out, width=120)
    with follow_run(tmp_path, "demo-ppi-lora", total=4, console=console, refresh_s=0.05) as progress:
        append(tmp_path / "metrics.jsonl", {"step": 4, "time": time.time(), "train_loss": 0.25})
    assert progress.step == 4
    assert "demo-ppi-lora  step 4/4  loss 0.2500  ETA 0:00" in out.getvalue()


def test_planned_steps_as_training_plans_them(make_config) -> None:
    cfg = make_config("ppi", "lora")  # 840 training pairs, batch 16, one epoch, one worker
    assert planned_steps(cfg) == 840 // 16
    assert planned_steps(make_config("ppi", "lora", "optim.max_steps=3")) == 3
    assert planned_steps(make_config("ppi", "lora", "data.pairs=/no/such/pairs.tsv")) is None


def test_quiet_by_default_for_commands_verbose_on_request(monkeypatch) -> None:
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)
    assert verbosity() is None and ray_output(None) == {"logging_level": logging.WARNING, "log_to_driver": True}
    set_verbosity(False)
    assert verbosity() is False and os.environ["MLFLOW_LOGGING_LEVEL"] == "WARNING"
    assert ray_output(False) == {"logging_level": logging.ERROR, "log_to_driver": False}
    monkeypatch.setenv(VERBOSE_ENV, "1")  # a job submitted with --verbose: its command's default does not undo it
    set_verbosity(False)
    assert verbosity() is True and ray_output(True) == {"logging_level": logging.INFO, "log_to_driver": True}


def test_a_run_that_fails_before_its_first_step_leaves_only_its_error(tmp_path: Path) -> None:
    out = io.StringIO()
    with pytest.raises(RuntimeError), follow_run(tmp_path, "broken", console=Console(file=out), refresh_s=0.05):
        raise RuntimeError("bad data")
    assert out.getvalue() == ""
