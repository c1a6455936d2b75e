"""``protpeft evaluate``: a saved run's metrics on its own data, with ``--set`` overrides applied."""

from __future__ import annotations

import pytest

from protpeft.data.datasets import load_task_data
from protpeft.evaluation import evaluate_run
from protpeft.trainer.run import run_training

pytestmark = pytest.mark.unit


def test_overrides_apply_to_the_runs_own_config(make_config) -> None:
    cfg = make_config("symmetry", "frozen", "optim.max_steps=2", name="evaluated")
    run_dir = run_training(cfg).run_dir
    overrides = ["data.split.method=random", "data.split.fractions=[0.4,0.2,0.4]"]
    wanted = len(load_task_data("symmetry", make_config("symmetry", "frozen", *overrides).data).splits["test"])
    recorded = len(load_task_data("symmetry", cfg.data).splits["test"])
    assert wanted != recorded  # the override changes the test split

    assert evaluate_run(run_dir)["examples"] == recorded
    result = evaluate_run(run_dir, overrides=overrides)  # no --config: the run's own config + the override
    assert result["examples"] == wanted
    assert 0.0 <= result["test_aupr"] <= 1.0


def test_an_unknown_split_is_a_one_line_error_naming_the_splits(make_config) -> None:
    from protpeft.errors import ConfigError

    run_dir = run_training(make_config("symmetry", "frozen", "optim.max_steps=1", name="split-check")).run_dir
    with pytest.raises(ConfigError, match=r"--split nope: no such split; this run's data has test, train, val"):
        evaluate_run(run_dir, split="nope")
