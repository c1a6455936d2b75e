"""The robustness report from a trials.json: numbers match the trials, one plot per question, both documents."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from protpeft.tune.report import effect_groups, mode_stats, sensitivity, write_report

pytestmark = pytest.mark.unit


def trial(i: int, mode: str, lr: float, hidden: int, aupr: float, state: str = "FINISHED") -> dict:
    return {"trial_id": f"t{i:02d}", "state": state, "mode": mode,
            "config": {"mode": mode, "optim.lr": lr, "model.head_hidden": hidden},
            "metrics": {"val_aupr": aupr, "test_aupr": aupr - 0.01}, "steps": 30 if state == "FINISHED" else 10,
            "run_dir": f"/runs/t{i:02d}" if state == "FINISHED" else None}  # fmt: skip


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    rows = []
    for i in range(24):
        mode = ("frozen", "lora")[i % 2]
        lr = float(10 ** rng.uniform(-4, -1.5))
        hidden = (32, 128)[(i // 2) % 2]
        # LoRA degrades sharply at high lr; frozen barely moves
        aupr = 0.9 - (0.3 * (np.log10(lr) + 4) / 2.5 if mode == "lora" else 0.02 * rng.random())
        rows.append(trial(i, mode, lr, hidden, float(aupr)))
    rows.append(trial(24, "lora", 0.02, 32, 0.51, state="STOPPED"))
    data = {"experiment": "unit", "metric": "val_aupr", "mode": "max", "algorithm": "random", "asha": True,
            "space": {"mode": {"grid": ["frozen", "lora"]}, "optim.lr": {"loguniform": [1e-4, 3e-2]},
                      "model.head_hidden": {"choice": [32, 128]}},
            "log_scale": ["optim.lr"], "best_trial_id": "t00", "registered": "demo/1", "trials": rows}  # fmt: skip
    (tmp_path / "trials.json").write_text(json.dumps(data))
    return tmp_path


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    section = markdown.split(heading, 1)[1]
    table = next(block for block in section.split("\n\n") if block.startswith("|"))
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in table.splitlines()[2:]]


def test_report_numbers_match_the_trials(experiment: Path) -> None:
    files = write_report(experiment)
    rows = json.loads((experiment / "trials.json").read_text())["trials"]
    markdown = files.markdown.read_text()
    stats = {r[0]: r for r in table_rows(markdown, "## Final val_aupr by mode")}
    for mode in ("frozen", "lora"):
        values = np.array([r["metrics"]["val_aupr"] for r in rows if r["mode"] == mode and r["state"] == "FINISHED"])
        _, n, lo, med, hi, mean, std, gap, stopped, failed = stats[mode]
        assert int(n) == len(values) == 12
        assert float(lo) == pytest.approx(values.min(), abs=1e-4)
        assert float(med) == pytest.approx(np.median(values), abs=1e-4)
        assert float(hi) == pytest.approx(values.max(), abs=1e-4)
        assert float(std) == pytest.approx(values.std(ddof=1), abs=1e-4)
        assert float(gap) == pytest.approx(values.max() - values.min(), abs=1e-4)
        assert int(stopped) == (1 if mode == "lora" else 0) and int(failed) == 0
    # the stopped trial is listed but never averaged
    assert "t24 | STOPPED" in markdown and "registered as demo/1" in markdown
    html = files.html.read_text()
    assert html.count("<img") == len(files.plots) and "<table>" in html


def test_one_plot_per_question_and_all_are_pngs(experiment: Path) -> None:
    import matplotlib.image

    files = write_report(experiment, experiment / "out")
    names = sorted(p.name for p in files.plots)
    assert names == ["distribution.png", "effect_model_head_hidden.png", "effect_optim_lr.png", "sensitivity.png"]
    for plot in files.plots:
        image = matplotlib.image.imread(plot)
        assert image.shape[0] > 300 and image.shape[1] > 500 and image.std() > 0.01  # not blank
        assert f"]({plot.name})" in files.markdown.read_text()


def test_sensitivity_separates_a_sensitive_mode_from_a_robust_one(experiment: Path) -> None:
    rows = json.loads((experiment / "trials.json").read_text())["trials"]
    effects = {"optim.lr": effect_groups(rows, "optim.lr", "val_aupr", log=True)}
    lr_groups = effects["optim.lr"]["lora"]
    assert len(lr_groups) == 4  # >8 distinct values: quartile bins
    assert sum(g.n for g in lr_groups) == 12
    assert [g.mean for g in lr_groups] == sorted((g.mean for g in lr_groups), reverse=True)  # higher lr, worse
    gaps = sensitivity(effects)["optim.lr"]
    assert gaps["lora"] > 0.1 > gaps["frozen"]
    by_mode = {s["mode"]: s for s in mode_stats(rows, "val_aupr")}
    assert by_mode["lora"]["gap"] > by_mode["frozen"]["gap"]


def test_categorical_key_groups_by_value(experiment: Path) -> None:
    rows = json.loads((experiment / "trials.json").read_text())["trials"]
    groups = effect_groups(rows, "model.head_hidden", "val_aupr")
    assert [g.label for g in groups["frozen"]] == ["32", "128"]
    expected = np.mean([r["metrics"]["val_aupr"] for r in rows
                        if r["mode"] == "frozen" and r["config"]["model.head_hidden"] == 32])  # fmt: skip
    assert groups["frozen"][0].mean == pytest.approx(expected)
    assert re.fullmatch(r"\d+", groups["lora"][1].label)


def test_the_trials_table_shows_the_metric_the_search_ranked_by() -> None:
    from rich.console import Console

    from protpeft.tune.cli import trials_table

    rows = [trial(1, "lora", 1e-3, 32, 0.7), trial(2, "lora", 5e-3, 32, 0.8)]
    for row, loss in zip(rows, (0.25, 0.125), strict=True):
        row["metrics"]["val_loss"] = loss
    console = Console(record=True, width=200)
    console.print(trials_table(rows, rows[1], "val_loss"))
    text = console.export_text()
    assert "val_loss" in text and "val_aupr" not in text
    assert re.search(r"t02 \*.*0\.1250", text) and "0.2500" in text
