"""The one loop across the (task, mode) matrix on the tiny ESM-2 and synthetic data: it learns, it trains only
what the mode allows, its run directory reloads to the same predictions bit for bit, and a resumed run continues."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from protpeft.artifact import ARTIFACT_FILE
from protpeft.models.backbone import load_backbone
from protpeft.predict import Predictor, predict_batches
from protpeft.trainer.checkpoints import LocalReporter, latest_checkpoint
from protpeft.trainer.run import run_training

pytestmark = pytest.mark.unit

# (task, mode, overrides that make the tiny random model learn within a few seconds of CPU)
CASES = [
    ("ppi", "frozen", ["optim.lr=1e-2", "optim.epochs=10"]),
    ("ppi", "lora", ["optim.lr=5e-3", "optim.epochs=8"]),
    ("ppi", "full", ["optim.lr=1e-4", "optim.epochs=5"]),
    ("symmetry", "frozen", ["optim.lr=1e-2", "optim.epochs=10"]),
    ("symmetry", "lora", ["optim.lr=5e-3", "optim.epochs=5"]),
    ("symmetry", "full", ["optim.lr=3e-4", "optim.epochs=3"]),
]
EXPECTED_FILES = {
    "frozen": {"protpeft.json", "head.safetensors", "metrics.jsonl"},
    "lora": {
        "protpeft.json",
        "head.safetensors",
        "metrics.jsonl",
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
    },
    "full": {"protpeft.json", "head.safetensors", "metrics.jsonl", "backbone"},
}
_trained: dict[tuple[str, str], object] = {}


@pytest.fixture
def trained(make_config, tmp_path_factory):
    """Train each (task, mode) once per session, on demand."""

    def get(task: str, mode: str):
        if (task, mode) not in _trained:
            overrides = next(o for t, m, o in CASES if (t, m) == (task, mode))
            cfg = make_config(
                task, mode, "optim.warmup_ratio=0.1", *overrides, f"output_dir={tmp_path_factory.mktemp('runs')}"
            )
            _trained[(task, mode)] = run_training(cfg)
        return _trained[(task, mode)]

    return get


@pytest.mark.parametrize(("task", "mode"), [(t, m) for t, m, _ in CASES])
def test_learns_above_chance_on_held_out_data(trained, task: str, mode: str) -> None:
    result = trained(task, mode)
    assert result.metrics["test_positive_rate"] <= 0.5
    assert result.metrics["test_aupr"] >= 0.8, result.metrics
    assert result.metrics["test_auroc"] >= 0.8
    log = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in log if "train_loss" in r]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])  # the training loss went down


@pytest.mark.parametrize(("task", "mode"), [(t, m) for t, m, _ in CASES])
def test_run_directory_contract(trained, task: str, mode: str) -> None:
    result = trained(task, mode)
    assert {p.name for p in result.run_dir.iterdir() if p.name != "checkpoints"} == EXPECTED_FILES[mode]
    meta = json.loads((result.run_dir / ARTIFACT_FILE).read_text())
    assert (meta["task"], meta["mode"], meta["pooling"]) == (task, mode, "mean")
    assert meta["params"] == result.params and meta["steps"] == result.state.step
    assert len(meta["label_names"]) == (1 if task == "ppi" else 18)
    assert meta["config"]["mode"] == mode and meta["split_counts"]["test"] > 0


@pytest.mark.parametrize("mode", ["frozen", "lora", "full"])
def test_only_the_modes_parameters_change(trained, tiny_model: Path, mode: str) -> None:
    result = trained("ppi", mode)
    original = dict(load_backbone(str(tiny_model)).named_parameters())
    backbone = result.model.encoder.backbone
    changed, kept = [], []
    for name, param in backbone.named_parameters():
        if "lora_" in name:
            continue
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        (kept if torch.equal(param.detach().cpu(), original[key].detach()) else changed).append(key)
    if mode == "full":
        assert len(changed) > 0.9 * len(original)
    else:
        assert changed == [], f"{mode} changed backbone weights {changed[:3]}"
    counts = result.params
    expected_trainable = {"full": counts["total"], "frozen": 8_449}.get(mode)
    if expected_trainable is not None:
        assert counts["trainable"] == expected_trainable  # frozen: the 64→128→1 head only
    else:
        assert 8_449 < counts["trainable"] < counts["total"] // 5


RELOAD_SCRIPT = """
import json, sys, numpy as np, torch
from protpeft.predict import Predictor
torch.set_num_threads(1)
runs, examples, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
result = {}
for key, run_dir in runs.items():
    predictor = Predictor.from_run_dir(run_dir)
    ex = examples[predictor.task]
    inputs = {"pairs": ex} if predictor.task == "ppi" else {"sequences": [e[0] for e in ex]}
    result[key] = predictor.predict(batch_size=2, **inputs)
np.savez(out, **result)
"""


def test_saved_runs_reload_bit_for_bit_in_a_fresh_process(trained, tiny_model: Path, tmp_path: Path) -> None:
    from protpeft.data.tokens import TokenEncoder
    from protpeft.models.backbone import load_tokenizer

    runs = {f"{t}-{m}": trained(t, m) for t, m, _ in CASES}
    examples = {
        "ppi": [("MKVLAAGIWKRHKRH", "DENDENAAGLLV"), ("ACDEFGHIKLMNPQRSTVWY", "MKV"), ("FWYFWY", "CMPCMPAAG")],
        "symmetry": [("MKVLAAGIWKRHKRH",), ("ACDEFGHIKLMNPQRSTVWY",), ("NQNQNQLLLLAAG",)],
    }
    tokens = TokenEncoder(load_tokenizer(str(tiny_model)))
    # the trained modules still in memory (backbone encoder in every mode), batched as the predictor batches; one
    # thread on both sides: how a CPU kernel splits a sum over threads changes its last bits (seen: 6e-8 once)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = {k: predict_batches(r.model, tokens, examples[k.split("-")[0]], 2) for k, r in runs.items()}
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "reloaded.npz"
    paths = json.dumps({k: str(r.run_dir) for k, r in runs.items()})
    subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, paths, json.dumps(examples), str(out)], check=True)
    reloaded = np.load(out)
    for key, probs in expected.items():
        assert np.array_equal(reloaded[key].reshape(probs.shape), probs), f"{key}: reloaded predictions differ"


def test_frozen_mode_embeds_each_sequence_once(make_config) -> None:
    first = run_training(make_config("symmetry", "frozen", "optim.max_steps=2", "model.head_hidden=16", name="a"))
    second = run_training(make_config("symmetry", "frozen", "optim.max_steps=2", "model.head_hidden=32", name="b"))
    assert first.embedded_sequences > 0 or second.embedded_sequences == 0
    assert second.embedded_sequences == 0  # same backbone, pooling and crop: everything came from the cache


class _StopAfter(LocalReporter):
    """Simulates a crash right after the checkpoint at ``step``."""

    def __init__(self, root: Path, step: int) -> None:
        super().__init__(root, keep=5)
        self.stop_at = step

    def report(self, metrics, checkpoint_dir) -> None:
        super().report(metrics, checkpoint_dir)
        if metrics["step"] == self.stop_at:
            raise KeyboardInterrupt


def test_resume_continues_from_the_saved_step(make_config) -> None:
    overrides = ["optim.max_steps=8", "engine.eval_every=2", "optim.epochs=3", "lora.dropout=0.1"]
    straight = run_training(make_config("ppi", "lora", *overrides, name="straight"))

    cfg = make_config("ppi", "lora", *overrides, name="interrupted")
    root = cfg.run_dir / "checkpoints"
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, reporter=_StopAfter(root, step=4))
    checkpoint = latest_checkpoint(root)
    assert checkpoint is not None and checkpoint.name == "step-00000004"
    reporter = LocalReporter(root, keep=5)
    resumed = run_training(cfg, reporter=reporter, resume_from=checkpoint)
    assert [m["step"] for m in reporter.history] == [6, 8]  # continued at 4: only steps 5..8 were trained
    assert resumed.state.step == straight.state.step == 8
    for (name, a), b in zip(
        straight.model.head.state_dict().items(), resumed.model.head.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    assert resumed.metrics["val_loss"] == pytest.approx(straight.metrics["val_loss"], abs=1e-6)


def test_too_small_training_set_is_a_clear_error(make_config) -> None:
    from protpeft.errors import ConfigError

    with pytest.raises(ConfigError, match="fewer than one optimizer step"):
        run_training(make_config("symmetry", "frozen", "optim.batch_size=500", "optim.grad_accum=4"))


def test_predictor_refuses_bad_letters(trained) -> None:
    predictor = Predictor.from_run_dir(trained("symmetry", "frozen").run_dir)
    with pytest.raises(ValueError, match="'J' at position 3"):
        predictor.predict(sequences=["MKJL"])
