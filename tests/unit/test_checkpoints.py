"""The local checkpoint keeper keeps the latest checkpoint plus the best ones by the chosen metric."""

from __future__ import annotations

from pathlib import Path

import pytest

from protpeft.trainer.checkpoints import LocalReporter

pytestmark = pytest.mark.unit


def _report(reporter: LocalReporter, staging: Path, step: int, metrics: dict[str, float]) -> None:
    checkpoint = staging / f"step-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "weights").write_text(str(step))
    reporter.report(metrics, checkpoint)


@pytest.mark.parametrize(
    ("mode", "losses", "kept"),
    [
        ("min", [0.5, 0.2, 0.9, 0.3], {"step-2", "step-4"}),
        ("max", [0.5, 0.2, 0.9, 0.3], {"step-3", "step-4"}),
    ],
)
def test_keeps_the_best_by_mode_and_the_latest(tmp_path: Path, mode: str, losses: list[float], kept: set) -> None:
    reporter = LocalReporter(tmp_path / "checkpoints", keep=1, metric="val_loss", mode=mode)
    for step, loss in enumerate(losses, start=1):
        _report(reporter, tmp_path / "staging", step, {"val_loss": loss})
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} == kept


@pytest.mark.parametrize("mode", ["min", "max"])
def test_a_checkpoint_without_the_metric_is_never_the_best(tmp_path: Path, mode: str) -> None:
    reporter = LocalReporter(tmp_path / "checkpoints", keep=1, metric="val_loss", mode=mode)
    _report(reporter, tmp_path / "staging", 1, {"val_loss": 0.4})
    _report(reporter, tmp_path / "staging", 2, {"train_loss": 0.1})
    _report(reporter, tmp_path / "staging", 3, {"val_loss": 0.6 if mode == "min" else 0.2})
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} == {"step-1", "step-3"}
