"""Backbone loading, tokenisation, pooling, modes and parameter counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from protpeft.config import load_config
from protpeft.data.tokens import TokenEncoder
from protpeft.models.backbone import backbone_fingerprint, load_backbone, load_tokenizer
from protpeft.models.classifier import pool_hidden_states
from protpeft.models.modes import apply_mode, count_parameters, lora_layers
from protpeft.models.params import parameter_report

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("config", "trainable"),
    [("ppi_lora", 491_777), ("ppi_frozen", 164_097)],
)
def test_paper_parameter_counts_650m(config: str, trainable: int) -> None:
    report = parameter_report(load_config(ROOT / "configs" / "paper" / f"{config}.yaml"))
    assert report["trainable"] == trainable
    assert 649_000_000 < report["total"] < 652_000_000


def test_full_mode_trains_everything_650m() -> None:
    report = parameter_report(load_config(ROOT / "configs" / "paper" / "ppi_full.yaml"))
    assert report["trainable"] == report["total"] > 649_000_000


def test_lora_counts_3b_without_weights() -> None:
    cfg = load_config(ROOT / "configs" / "paper" / "ppi_lora.yaml", ["model.base=facebook/esm2_t36_3B_UR50D"])
    report = parameter_report(cfg)
    assert report["lora_layers"] == list(range(28, 36))
    assert report["backbone_trainable"] == 655_360  # r 8 x (2560 + 2560) x key,value x 8 layers
    assert report["total"] > 2_800_000_000


def test_lora_layer_selection() -> None:
    cfg = load_config(None, ["lora.last_layers=2"])
    assert lora_layers(cfg.lora, 6) == [4, 5]
    assert lora_layers(load_config(None, ["lora.layers=[0,2]"]).lora, 6) == [0, 2]


def test_token_encoder_matches_esm_tokenizer(tiny_model: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_model))
    encoder = TokenEncoder(tokenizer, crop=1024)
    for seq in ["MKVLAAGIW", "XBZUO", "ACDEFGHIKLMNPQRSTVWY"]:
        assert encoder.encode(seq).tolist() == tokenizer(seq)["input_ids"]
    assert (encoder.cls_id, encoder.pad_id, encoder.eos_id) == (0, 1, 2)


def test_crop_and_padding(tiny_model: Path) -> None:
    encoder = TokenEncoder(load_tokenizer(str(tiny_model)), crop=10)
    batch = encoder.batch(["A" * 30, "MK"])
    assert batch["input_ids"].shape == (2, 10)
    assert batch["input_ids"][0, 0] == 0 and batch["input_ids"][0, -1] == 2  # <cls> ... <eos> even when cropped
    assert batch["input_ids"][1].tolist() == [0, 20, 15, 2] + [1] * 6  # padded with ESM's pad id 1, not <cls>
    assert batch["attention_mask"][1].tolist() == [1] * 4 + [0] * 6


def test_mean_pooling_ignores_special_and_pad_tokens() -> None:
    hidden = torch.arange(6, dtype=torch.float32).view(1, 6, 1).repeat(1, 1, 2)
    ids = torch.tensor([[0, 5, 6, 2, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    pooled = pool_hidden_states(hidden, ids, mask, "mean", (0, 2))
    assert pooled.tolist() == [[1.5, 1.5]]  # mean of positions 1 and 2 only
    assert pool_hidden_states(hidden, ids, mask, "cls", (0, 2)).tolist() == [[0.0, 0.0]]


def test_padding_does_not_change_embeddings(tiny_model: Path) -> None:
    from protpeft.models.classifier import ProteinEncoder

    tokens = TokenEncoder(load_tokenizer(str(tiny_model)))
    encoder = ProteinEncoder(load_backbone(str(tiny_model)), "mean", tokens.special_ids).eval()
    with torch.no_grad():
        alone = encoder(**tokens.batch(["MKVLA"]))
        padded = encoder(**tokens.batch(["MKVLA", "MKVLAGGGGGGGGGGGGGGG"]))[:1]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["full", "lora", "frozen"])
def test_modes_decide_what_is_trainable(tiny_model: Path, mode: str) -> None:
    cfg = load_config(None, [f"mode={mode}", "lora.last_layers=2"])
    backbone = apply_mode(load_backbone(str(tiny_model)), mode, cfg.lora)
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    counts = count_parameters(backbone)
    if mode == "full":
        assert counts["trainable"] == counts["total"]
    elif mode == "frozen":
        assert trainable == [] and not backbone.training
    else:
        assert trainable and all("lora_" in n for n in trainable)
        assert {n.split(".layer.")[1].split(".")[0] for n in trainable} == {"2", "3"}  # last 2 of 4 layers
        assert all(("key" in n or "value" in n) for n in trainable)


def test_fingerprint_is_dtype_independent_and_weight_sensitive(tiny_model: Path) -> None:
    fp32 = load_backbone(str(tiny_model))
    bf16 = load_backbone(str(tiny_model), dtype=torch.bfloat16)
    assert backbone_fingerprint(fp32) == backbone_fingerprint(bf16)
    cfg = load_config(None, ["lora.last_layers=2"])
    assert backbone_fingerprint(apply_mode(load_backbone(str(tiny_model)), "lora", cfg.lora)) == backbone_fingerprint(
        fp32
    )
    with torch.no_grad():
        fp32.encoder.layer[0].attention.self.query.weight.mul_(1.5)
    assert backbone_fingerprint(fp32) != backbone_fingerprint(bf16)


def test_base_model_with_only_pickled_weights_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file

    from protpeft.errors import ProtpeftError

    pickled = tmp_path / "pickled-base"
    pickled.mkdir()
    shutil.copy(tiny_model / "config.json", pickled / "config.json")
    torch.save(load_file(tiny_model / "model.safetensors"), pickled / "pytorch_model.bin")  # the same weights, pickled
    with pytest.raises(ProtpeftError, match=r"refusing .* pytorch_model\.bin: only safetensors"):
        load_backbone(str(pickled))


def test_base_models_load_with_safetensors_only(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import EsmModel

    seen: dict = {}
    original = EsmModel.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.update(kwargs)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(EsmModel, "from_pretrained", classmethod(spy))
    load_backbone(str(tiny_model))
    assert seen["use_safetensors"] is True  # hub ids too: transformers then never falls back to pickles
