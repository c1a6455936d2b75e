"""TUNE files: shipped ones load, mistakes fail with the file, line and key, sampled values become run configs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from protpeft.errors import ConfigError, ProtpeftError
from protpeft.tune.space import load_search, search_from_dict

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
TUNE_FILES = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "space" in (yaml.safe_load(p.read_text()) or {}))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(text)
    return path


BASE = """\
config: {task: ppi, mode: lora, name: t, model: {base: facebook/esm2_t6_8M_UR50D}, optim: {max_steps: 20}}
"""


def test_shipped_tune_files_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(TUNE_FILES) >= 5, TUNE_FILES
    monkeypatch.chdir(ROOT)  # their `base:` paths are relative to the checkout
    names = set()
    for path in TUNE_FILES:
        search = load_search(path.relative_to(ROOT))
        assert search.keys and search.sample_config().task == "ppi"
        names.add(search.name)
    assert {"robustness-lr", "demo"} <= names
    paper = {p.stem for p in (ROOT / "configs" / "paper").glob("robustness_*.yaml")}
    assert paper == {"robustness_lora_rank", "robustness_lora_targets", "robustness_lora_layers", "robustness_lr"}


def test_unknown_space_key_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "space:\n  lora.rank: {grid: [4, 8]}\n")
    with pytest.raises(ConfigError, match=r"search\.yaml: space\.lora\.rank: not a run config key: 'rank'"):
        load_search(path)


def test_value_making_an_invalid_config_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "space:\n  mode: {grid: [lora, frozen]}\n  model.pooling: {choice: [mean, max]}\n")
    with pytest.raises(ConfigError, match=r"space\.model\.pooling: value 'max' gives an invalid config"):
        load_search(path)


def test_bad_domain_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "search: {algorithm: random}\nspace:\n  optim.lr: {loguniform: [1.0e-2, 1.0e-4]}\n")
    with pytest.raises(ConfigError, match=r"search\.yaml:4.*lower bound 0\.01 must be below upper bound 0\.0001"):
        load_search(path)


def test_search_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="metric 'test_aupr'"):
        load_search(write(tmp_path, BASE + "search: {metric: test_aupr}\nspace: {optim.lr: {choice: [1.0e-3]}}\n"))
    with pytest.raises(ConfigError, match="optuna samples its trials"):
        load_search(write(tmp_path, BASE + "search: {algorithm: optuna}\nspace: {lora.r: {grid: [4, 8]}}\n"))
    with pytest.raises(ConfigError, match="asha.max_t is needed"):
        raw = {"config": {"task": "ppi", "mode": "lora"}, "asha": {"enabled": True}}
        search_from_dict(raw | {"space": {"lora.r": {"grid": [4]}}}, "inline.yaml")


def test_sampled_values_become_the_trial_config() -> None:
    raw = yaml.safe_load(BASE) | {
        "set": ["optim.lr=0.5"],
        "resources": {"CPU": 2},
        "space": {
            "lora.target_modules": {"choice": [["key", "value"], ["query", "key", "value"]]},
            "lora.r": {"randint": [4, 17]},
            "optim.lr": {"loguniform": [1e-4, 1e-2]},
        },
    }
    search = search_from_dict(raw, "inline.yaml")
    space = search.param_space()  # structured choices travel through Tune as JSON strings
    assert space["lora.target_modules"].categories == ['["key", "value"]', '["query", "key", "value"]']
    values = search.decode({"lora.target_modules": '["query", "key", "value"]', "lora.r": 12, "optim.lr": 3e-3})
    cfg = search.trial_config(values, {"name": "trial-1"})
    assert cfg.lora.target_modules == ["query", "key", "value"] and cfg.lora.r == 12 and cfg.optim.lr == 3e-3
    assert cfg.name == "trial-1" and cfg.engine.cpus_per_worker == 2
    from protpeft.tune.space import restore_search

    again = restore_search(search.to_dict())
    assert again.trial_config(values, {"name": "trial-1"}) == cfg


def test_capacity_is_capped_by_the_cluster() -> None:
    from protpeft.tune.experiment import trial_capacity

    raw = yaml.safe_load(BASE) | {"set": ["engine.workers=2"], "search": {"max_concurrent": 4},
                                  "space": {"lora.r": {"grid": [4, 8]}}}  # fmt: skip
    search = search_from_dict(raw, "inline.yaml")
    assert trial_capacity(search, {"CPU": 8}) == 4
    assert trial_capacity(search, {"CPU": 5}) == 2
    with pytest.raises(ProtpeftError, match=r"a trial needs 2 CPU \(2 workers x 1\); the cluster has 1"):
        trial_capacity(search, {"CPU": 1})


def test_cli_tune_file_shorthand_reports_a_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "space:\n  lora.rr: {grid: [4]}\n")
    done = subprocess.run([sys.executable, "-m", "protpeft", "tune", str(path)], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "space.lora.rr: not a run config key" in done.stderr and "Traceback" not in done.stderr
    resume = subprocess.run([sys.executable, "-m", "protpeft", "tune", "--resume", str(tmp_path)],
                            capture_output=True, text=True)  # fmt: skip
    assert resume.returncode == 2 and "nothing to resume" in resume.stderr, resume.stderr


def test_asha_stops_weak_trials_at_rungs_but_never_at_their_last_step() -> None:
    """Ray's ASHA has a rung at max_t (160 = 40 x 2^2) and would stop a trial at its last evaluation, before it
    writes its artefact; FinishingASHA lets it finish."""
    from types import SimpleNamespace

    from ray.tune.schedulers import ASHAScheduler

    from protpeft.tune.experiment import FinishingASHA

    def results(scheduler_class) -> list[str]:
        scheduler = scheduler_class(time_attr="step", metric="val_aupr", mode="max", max_t=160, grace_period=40)
        trials = [SimpleNamespace(trial_id=name) for name in "abc"]
        for trial in trials:
            scheduler.on_trial_add(None, trial)
        a, b, c = trials
        return [
            scheduler.on_trial_result(None, a, {"step": 40, "val_aupr": 0.9}),
            scheduler.on_trial_result(None, a, {"step": 160, "val_aupr": 0.9}),
            scheduler.on_trial_result(None, b, {"step": 40, "val_aupr": 0.5}),  # below the rung's median
            scheduler.on_trial_result(None, c, {"step": 40, "val_aupr": 0.95}),
            scheduler.on_trial_result(None, c, {"step": 160, "val_aupr": 0.1}),  # worse at the end: still finishes
        ]

    assert results(FinishingASHA) == ["CONTINUE", "CONTINUE", "STOP", "CONTINUE", "CONTINUE"]
    assert results(ASHAScheduler)[-1] == "STOP"  # what the subclass is for


def test_each_algorithm_builds_its_ray_searcher() -> None:
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from protpeft.tune.experiment import FinishingASHA, _tune_config

    space = {"optim.lr": {"loguniform": [1e-4, 1e-2]}, "lora.r": {"choice": [4, 8]}}
    optuna = search_from_dict(yaml.safe_load(BASE) | {"search": {"algorithm": "optuna", "num_samples": 5,
                              "max_concurrent": 3}, "asha": {"enabled": True}, "space": space}, "o.yaml")  # fmt: skip
    config = _tune_config(optuna, capacity=2)
    assert isinstance(config.search_alg, ConcurrencyLimiter) and config.search_alg.max_concurrent == 2
    assert isinstance(config.search_alg.searcher, OptunaSearch) and config.num_samples == 5
    assert isinstance(config.scheduler, FinishingASHA) and config.scheduler._max_t == 20  # base optim.max_steps
    grid = search_from_dict(yaml.safe_load(BASE) | {"search": {"algorithm": "grid"},
                            "space": {"lora.r": {"grid": [4, 8]}}}, "g.yaml")  # fmt: skip
    config = _tune_config(grid, capacity=2)
    assert isinstance(config.search_alg, BasicVariantGenerator) and config.scheduler is None
    assert config.num_samples == 1 and (config.metric, config.mode) == ("val_aupr", "max")
