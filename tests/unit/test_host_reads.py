"""A training step reads nothing back from an accelerator that the backbone does not read itself, so the host can
queue the next step while the device computes (on a GPU a read waits for every kernel queued before it).

The steps run on PyTorch's ``meta`` device: it takes every accelerator branch (one encoder call, no trimming) and
holds no data, so a dispatch mode sees each device → host read (``.item()``, ``int()``, ``bool()``, ``.tolist()``,
``.cpu()``), answers it with ones, and names the line that asked. transformers' ESM reads one value per forward
(``padding_mask.all()``: whether the call needs an attention mask), the plain loop's as much as ours; protpeft's own
code reads nothing in a cache-off step and one copy of the batch's token ids with the prefix cache (the cache's
keys), where it read 2 + one per row before.
"""

from __future__ import annotations

import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from protpeft.data.collate import TokenCollate
from protpeft.data.datasets import load_task_data
from protpeft.data.tokens import TokenEncoder
from protpeft.models.assembly import build_task_model
from protpeft.models.backbone import load_backbone, load_tokenizer
from protpeft.models.modes import apply_mode
from protpeft.models.prefix import PrefixEncoder, prefix_split
from protpeft.trainer.context import WorkerContext
from protpeft.trainer.engines import LocalEngine
from protpeft.trainer.loop import train_on_batch

pytestmark = pytest.mark.unit

META = torch.device("meta")


class DeviceReads(TorchDispatchMode):
    """Records where each read of a device tensor's values back to the host comes from (``file:line`` of the first
    frame outside torch) and answers it with ones."""

    def __init__(self) -> None:
        super().__init__()
        self.origins: list[str] = []

    def _record(self) -> None:
        for frame in reversed(traceback.extract_stack()[:-2]):
            if "/torch/" not in frame.filename:
                self.origins.append(f"{frame.filename}:{frame.lineno}")
                return

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if source is not None and source.device.type != "cpu":
            if func is torch.ops.aten._local_scalar_dense.default:
                self._record()
                return True if source.dtype == torch.bool else 1
            if func is torch.ops.aten._to_copy.default and kwargs.get("device") == torch.device("cpu"):
                self._record()
                return torch.ones(source.shape, dtype=kwargs.get("dtype") or source.dtype)
        return func(*args, **kwargs)


def _setup(make_config, task: str, mode: str, *overrides: str):
    cfg = make_config(task, mode, "optim.batch_size=4", *overrides, small=True)
    data = load_task_data(cfg.task, cfg.data)
    tokens = TokenEncoder(load_tokenizer(str(cfg.model.base)), cfg.data.crop)
    backbone = apply_mode(load_backbone(str(cfg.model.base)), cfg.mode, cfg.lora)
    model = build_task_model(backbone, cfg.task, cfg.model.pooling, cfg.model.head_hidden, 0.0, tokens.special_ids)
    collate = TokenCollate(tokens, data.sequences, model.members)
    return cfg, model, collate([*data.splits["train"][:4]])


def _backbone_reads(backbone: torch.nn.Module, **inputs: torch.Tensor) -> list[str]:
    """Where a bare forward of ``backbone`` on ``inputs`` (moved to the meta device) reads values back."""
    with DeviceReads() as reads, torch.no_grad():
        backbone(**{k: v.to(META) for k, v in inputs.items()})
    return reads.origins


def _step_reads(engine: LocalEngine, collated: dict) -> DeviceReads:
    with DeviceReads() as reads:
        loss = train_on_batch(engine, collated, META, boundary=True)
        engine.step()
    assert loss.device == META and loss.shape == ()
    return reads


@pytest.mark.parametrize(("task", "mode"), [("ppi", "lora"), ("ppi", "full"), ("symmetry", "lora")])
def test_a_step_reads_back_only_what_the_backbone_reads(make_config, task: str, mode: str) -> None:
    cfg, model, collated = _setup(make_config, task, mode, "optim.grad_clip=0.2", "data.prefix_cache=off")
    engine = LocalEngine(model, cfg, total_steps=10, ctx=WorkerContext.local("meta"))
    ids, mask = collated["inputs"]["input_ids"], collated["inputs"]["attention_mask"]
    own = _backbone_reads(model.encoder.backbone, input_ids=ids, attention_mask=mask)
    assert own and all("transformers" in o for o in own)  # the mask check: if transformers stops reading, fine
    reads = _step_reads(engine, collated)
    outside = [o for o in reads.origins if "transformers" not in o]
    assert outside == [], "protpeft read device values back in a training step"
    assert len(reads.origins) == len(own)  # one encoder call for the whole batch, as the plain loop makes


def test_a_prefix_cached_step_reads_back_the_token_ids_once(make_config) -> None:
    cfg, model, collated = _setup(make_config, "ppi", "lora", "lora.last_layers=2")
    backbone = model.encoder.backbone
    k, why = prefix_split(backbone)
    assert why is None and k == 2
    hidden = backbone.config.hidden_size
    looked_up: list[int] = []

    def lookup(keys: list[bytes], compute) -> list[torch.Tensor]:  # a filled cache: host tensors, one per row
        looked_up.append(len(keys))
        return [torch.zeros(len(key) // 2, hidden) for key in keys]  # int16 token ids: 2 bytes a token

    encoder = PrefixEncoder(backbone, k, cfg.model.pooling, (0, 2), lookup)
    cached = type(model)(encoder, model.head, model.members)
    engine = LocalEngine(cached, cfg, total_steps=10, ctx=WorkerContext.local("meta"))
    rows = collated["inputs"]["input_ids"].shape[0]
    suffix = _backbone_reads(encoder.suffix, inputs_embeds=torch.zeros(rows, 3, hidden),
                             attention_mask=torch.ones(rows, 3, dtype=torch.long))  # fmt: skip
    reads = _step_reads(engine, collated)
    assert looked_up == [rows] and rows > 2
    outside = [o for o in reads.origins if "transformers" not in o]
    assert len(outside) == 1 and "protpeft/models/prefix.py" in outside[0]
    assert len(reads.origins) == len(suffix) + 1
