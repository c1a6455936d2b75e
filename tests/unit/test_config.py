"""Config: YAML + overrides, errors naming file/line/key, every shipped config valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from protpeft.config import apply_overrides, flatten_config, load_config, parse_override
from protpeft.errors import ConfigError

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(
    p
    for p in (ROOT / "configs").rglob("*.yaml")
    if "jobs" not in p.name and "space" not in (yaml.safe_load(p.read_text()) or {})  # run-many and TUNE files
)


def test_defaults_are_the_papers() -> None:
    cfg = load_config()
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (8, 32, 0.1)
    assert cfg.lora.target_modules == ["key", "value"] and cfg.lora.last_layers == 8
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.grad_clip) == (1e-3, 0.01, 0.2)
    assert (cfg.optim.batch_size, cfg.optim.grad_accum, cfg.data.crop) == (4, 16, 1024)
    assert cfg.optim.schedule == "cosine"


def test_overrides_parse_yaml_values_and_create_sections() -> None:
    assert parse_override("optim.lr=3e-4") == (["optim", "lr"], 3e-4)
    assert parse_override("lora.target_modules=[query,value]") == (["lora", "target_modules"], ["query", "value"])
    assert parse_override("optim.max_steps=null") == (["optim", "max_steps"], None)
    merged = apply_overrides({"optim": {"lr": 1}}, ["optim.lr=2", "lora.r=4"])
    assert merged == {"optim": {"lr": 2}, "lora": {"r": 4}}


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("task: symmetry\nmode: frozen\noptim:\n  lr: 1.0e-2\n  epochs: 3\n")
    cfg = load_config(path, ["optim.epochs=5"])
    assert (cfg.task, cfg.mode, cfg.optim.lr, cfg.optim.epochs) == ("symmetry", "frozen", 1e-2, 5)


def test_error_names_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("task: ppi\noptim:\n  lr: 1.0e-3\n  batch_size: -4\nlora:\n  rank: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert f"{path}:4: optim.batch_size" in message  # both problems reported at once, each at its line
    assert f"{path}:6: lora.rank" in message and "Extra inputs are not permitted" in message


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("task: ppi\noptim: [1, 2\nmode: lora\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml:\d+: invalid YAML"):
        load_config(path)


def test_bad_override_and_choice() -> None:
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(None, ["optim.lr"])
    with pytest.raises(ConfigError, match="mode"):
        load_config(None, ["mode=adapter"])
    with pytest.raises(ConfigError, match="sum to 1"):
        load_config(None, ["data.split.fractions=[0.5,0.5,0.5]"])


def test_flatten_config_for_tracking() -> None:
    flat = flatten_config(load_config())
    assert flat["optim.lr"] == 1e-3 and flat["lora.target_modules"] == ["key", "value"]
    assert flat["data.split.method"] == "auto"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_is_valid(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name and cfg.mode in path.stem and cfg.task in path.stem


def test_yaml11_boolean_words_stay_strings_in_overrides() -> None:
    assert parse_override("name=off") == (["name"], "off")
    assert parse_override("data.bucket_by_length=false") == (["data", "bucket_by_length"], False)


def test_typed_dotted_values_are_set_without_strings(tmp_path: Path) -> None:
    from protpeft.config import set_dotted, with_values, worker_resource_values

    raw: dict = {"optim": {"lr": 1}}
    set_dotted(raw, "lora.target_modules", ["query"])
    set_dotted(raw, "optim.lr", 1e-5)
    assert raw == {"optim": {"lr": 1e-5}, "lora": {"target_modules": ["query"]}}
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 0.1}\n")
    cfg = load_config(path, ["optim.lr=0.2"], {"optim.lr": 1e-5, "name": "123", "tracking.alias": None})
    assert (cfg.optim.lr, cfg.name, cfg.tracking.alias) == (1e-5, "123", None)  # values win over --set
    again = with_values(cfg, {"lora.r": 4, "engine.cpus_per_worker": 0.5})
    assert (again.lora.r, again.engine.cpus_per_worker, cfg.lora.r) == (4, 0.5, 8)
    with pytest.raises(ConfigError, match="lora.r"):
        with_values(cfg, {"lora.r": 0})
    assert worker_resource_values({"CPU": 2, "GPU": 0.25}) == {
        "engine.cpus_per_worker": 2,
        "engine.gpus_per_worker": 0.25,
    }
    with pytest.raises(ConfigError, match="TPU"):
        worker_resource_values({"TPU": 1})
