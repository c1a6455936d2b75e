"""The ESM-2 backbone: load (hub id or local directory), write a tiny random one, build on meta for counting.

ESM-2 sizes are data (:data:`ESM2_PRESETS`), not classes. ``EsmConfig``'s defaults are not ESM-2's, so every
config built here goes through :func:`esm2_config`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "ESM2_PRESETS",
    "ESM_VOCAB",
    "Backbone",
    "backbone_config",
    "backbone_fingerprint",
    "build_backbone_on_meta",
    "esm2_config",
    "init_tiny",
    "load_backbone",
    "load_tokenizer",
    "quiet_hf",
]

log = logging.getLogger(__name__)

# The 33 ESM-2 tokens in vocabulary order: <cls>=0, <pad>=1, <eos>=2, <unk>=3, <mask>=32.
ESM_VOCAB: tuple[str, ...] = (
    "<cls>",
    "<pad>",
    "<eos>",
    "<unk>",
    "L",
    "A",
    "G",
    "V",
    "S",
    "E",
    "R",
    "T",
    "I",
    "D",
    "P",
    "K",
    "Q",
    "N",
    "F",
    "Y",
    "M",
    "H",
    "W",
    "C",
    "X",
    "B",
    "U",
    "Z",
    "O",
    ".",
    "-",
    "<null_1>",
    "<mask>",
)

# name → (layers, hidden, heads, intermediate); the public facebook/esm2_* checkpoints, plus `tiny` for tests.
ESM2_PRESETS: dict[str, tuple[int, int, int, int]] = {
    "esm2_t6_8M_UR50D": (6, 320, 20, 1280),
    "esm2_t12_35M_UR50D": (12, 480, 20, 1920),
    "esm2_t30_150M_UR50D": (30, 640, 20, 2560),
    "esm2_t33_650M_UR50D": (33, 1280, 20, 5120),
    "esm2_t36_3B_UR50D": (36, 2560, 40, 10240),
    "esm2_t48_15B_UR50D": (48, 5120, 40, 20480),
    "tiny": (4, 64, 4, 128),
}

Backbone = nn.Module  # an EsmModel, or a peft PeftModel wrapping one


def esm2_config(layers: int, hidden: int, heads: int, intermediate: int):
    """An ``EsmConfig`` with ESM-2's real settings (rotary positions, pad 1, mask 32, token dropout...)."""
    from transformers import EsmConfig

    return EsmConfig(
        vocab_size=len(ESM_VOCAB),
        mask_token_id=32,
        pad_token_id=1,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=1026,
        layer_norm_eps=1e-5,
        position_embedding_type="rotary",
        emb_layer_norm_before=False,
        token_dropout=True,
        vocab_list=list(ESM_VOCAB),
    )


def _preset_for(base: str) -> tuple[int, int, int, int] | None:
    name = base.rstrip("/").split("/")[-1]
    return ESM2_PRESETS.get(name)


def backbone_config(base: str):
    """The backbone's config without loading weights: a local directory's config.json, a known ESM-2 preset, or
    (last) the hub's config (works offline only when cached)."""
    from transformers import AutoConfig

    if Path(base).is_dir():
        return AutoConfig.from_pretrained(base)
    preset = _preset_for(base)
    if preset is not None:
        return esm2_config(*preset)
    return AutoConfig.from_pretrained(base)


def build_backbone_on_meta(base: str) -> nn.Module:
    """The backbone's architecture on the meta device: parameter counts for 650M/3B models with no memory used."""
    from transformers import EsmModel

    config = backbone_config(base)
    with torch.device("meta"):
        model = EsmModel(config, add_pooling_layer=False)
    _drop_contact_head(model)
    return model


def load_backbone(base: str, dtype: torch.dtype | None = None) -> nn.Module:
    """Load ESM-2 weights with ``from_pretrained`` from a hub id or a local directory (pooler dropped).

    Works on the hub's ``EsmForMaskedLM`` checkpoints and on plain ``EsmModel`` directories alike. Only safetensors
    weights are loaded: pickle-based ones (``pytorch_model.bin``) can run code when loaded and are refused.

    Raises:
        ProtpeftError: no such directory or reachable hub id, or a directory without safetensors weights.
    """
    from transformers import EsmModel

    from protpeft.errors import ProtpeftError

    _refuse_pickled_weights(base)
    try:
        with quiet_hf():
            model = EsmModel.from_pretrained(base, add_pooling_layer=False, dtype=dtype, use_safetensors=True)
    except OSError as err:
        raise ProtpeftError(
            f"cannot load backbone {base!r}: {err}. Give a local directory (see `protpeft model init-tiny`) or a "
            "hub id that is cached or reachable."
        ) from None
    _drop_contact_head(model)
    return model


def _refuse_pickled_weights(base: str) -> None:
    """A local directory with pickle-based weights but no safetensors: say so before transformers does."""
    directory = Path(base)
    if not directory.is_dir() or any(directory.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickled:
        from protpeft.errors import ProtpeftError

        raise ProtpeftError(
            f"{base}: refusing to load base model weights from {', '.join(pickled)}: only safetensors weights are "
            "loaded (pickle-based files can run code when loaded); convert them with save_pretrained "
            "(safe_serialization) in a trusted environment"
        )


@contextlib.contextmanager
def quiet_hf() -> Iterator[None]:
    """Hugging Face loading without its per-file progress bars, the expected "unused MLM head weights" report and
    peft's FutureWarning about a transformers rename: none of them is actionable for a protpeft user."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _drop_contact_head(model: nn.Module) -> None:
    # EsmModel always builds a contact-prediction head that forward() never uses. Dropped, it neither counts as a
    # parameter nor trips DDP's reducer ("Expected to have finished reduction") as an unused trainable parameter.
    if getattr(model, "contact_head", None) is not None:
        model.contact_head = None


def load_tokenizer(base: str):
    """ESM's tokenizer from the same place as the backbone."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base)


def init_tiny(
    out_dir: str | Path,
    layers: int = 4,
    hidden: int = 64,
    heads: int = 4,
    intermediate: int = 128,
    seed: int = 0,
) -> Path:
    """Write a random-initialised ESM-2-architecture checkpoint (``EsmForMaskedLM``, as the hub ships them) and the
    real ESM tokenizer, loadable by :func:`load_backbone` exactly like ``facebook/esm2_*``."""
    from transformers import EsmForMaskedLM, EsmTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = EsmForMaskedLM(esm2_config(layers, hidden, heads, intermediate))
    with quiet_hf():
        model.save_pretrained(out)
    vocab = out / "vocab.txt"
    vocab.write_text("\n".join(ESM_VOCAB) + "\n")
    EsmTokenizer(vocab_file=str(vocab)).save_pretrained(out)
    return out


def backbone_fingerprint(model: nn.Module) -> str:
    """A short, dtype-independent identity of the backbone's weights (before any fine-tuning).

    Hashes every parameter's name and shape and a strided sample of its values rounded to bfloat16, so the same
    weights loaded in fp32 or bf16, on CPU or GPU, give the same fingerprint in milliseconds even for 3B models.
    """
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        arch = {k: getattr(config, k, None) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")}
        digest.update(json.dumps(arch, sort_keys=True).encode())
    for name, tensor in sorted(_base_state(model).items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        flat = tensor.detach().reshape(-1)
        stride = max(1, flat.numel() // 4096)
        sample = flat[::stride][:4096].to("cpu", torch.float32).to(torch.bfloat16).view(torch.int16)
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def _base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Backbone parameters with names independent of peft wrapping and without adapter weights."""
    state = {}
    for name, param in model.named_parameters():
        if "lora_" in name:
            continue
        name = name.replace("base_model.model.", "").replace(".base_layer", "")
        state[name] = param
    return state
