"""LoRA without recomputing the frozen layers: split an ESM backbone at k, the lowest layer holding a trainable
parameter, into a prefix (embeddings + layers 0..k-1, computed once per sequence, no grad) and a suffix (layers
k..N-1 + the final layer norm) that trains on the prefix's cached output.

Why the split is exact (transformers' ``modeling_esm``): every prefix computation of a real token depends only on
its own sequence, never on the padding a batch adds —

- ``token_dropout`` rescales by ``(1 - 0.12) / (1 - masked / length)`` with ``length = attention_mask.sum(-1)``:
  one factor per sequence, no random mask;
- the embeddings zero padded positions; rotary positions are ``0..L-1`` for every row (right padding leaves real
  tokens at the same positions); absolute positions count real tokens only;
- attention masks padded *keys* out (their softmax weight is exactly 0), so whatever a padded position holds —
  the prefix's own values in the full forward, zeros in the cached one — never reaches a real token;
- dropout is off in the prefix (``hidden_dropout_prob = attention_probs_dropout_prob = 0``, checked), and its
  layers hold no LoRA modules (k is the lowest adapted layer), so it is the same function in train and eval mode.

The suffix runs transformers' own ``EsmModel.forward`` with ``inputs_embeds`` (which skips the embeddings) on a
*view* of the model that holds only layers k..N-1: the masks, rotary tables and layers are those of the full
forward, not a re-implementation. The padded positions a collated batch has are filled with zeros.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence

import torch
from torch import nn

from protpeft.models.classifier import pool_hidden_states

__all__ = [
    "PrefixEncoder",
    "count_prefix_rows",
    "esm_model",
    "padded_states",
    "prefix_forward",
    "prefix_split",
    "row_key",
]

_LAYER = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.")


def esm_model(backbone: nn.Module) -> nn.Module:
    """The ``EsmModel`` inside a plain or peft-wrapped backbone (peft injects its adapters into its layers)."""
    get_base = getattr(backbone, "get_base_model", None)
    return get_base() if callable(get_base) else backbone


def prefix_split(backbone: nn.Module) -> tuple[int, str | None]:
    """``(k, None)`` when layers 0..k-1 can be cached, else ``(0, why not)`` in a few words.

    k is the lowest encoder layer holding a trainable parameter; every parameter below it (embeddings included)
    must be frozen and the backbone's dropout off.
    """
    esm = esm_model(backbone)
    layers = getattr(getattr(esm, "encoder", None), "layer", None)
    if getattr(esm, "embeddings", None) is None or not isinstance(layers, nn.ModuleList):
        return 0, f"{type(esm).__name__} is not an ESM backbone"
    config = esm.config
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        if getattr(config, key, 0.0):
            return 0, f"the backbone config has {key} = {getattr(config, key)} (the frozen layers are random)"
    k = len(layers)
    for name, param in esm.named_parameters():
        if not param.requires_grad:
            continue
        match = _LAYER.search(name)
        if match is None and "emb_layer_norm_after" not in name:
            return 0, f"{name} is trainable (nothing below it is frozen)"
        if match is not None:
            k = min(k, int(match.group(1)))
    if k == 0:
        return 0, "layer 0 holds trainable parameters (no frozen layers to cache)"
    return k, None


def count_prefix_rows(backbone: nn.Module) -> Callable[[], int]:
    """A running count of the rows (sequences) computed through encoder layer 0 from now on, in any encoder that
    shares the layer: the full forward, the cache's filling and its misses."""
    rows = [0]

    def count(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        rows[0] += (args[0] if args else kwargs["hidden_states"]).shape[0]

    esm_model(backbone).encoder.layer[0].register_forward_pre_hook(count, with_kwargs=True)
    return lambda: rows[0]


def _view(esm: nn.Module, layers: Sequence[nn.Module], final_norm: bool) -> nn.Module:
    """A shallow copy of ``esm`` whose encoder runs only ``layers`` (the same module objects: shared weights,
    shared adapters, moved and switched to train/eval with the real model)."""
    encoder = copy.copy(esm.encoder)
    encoder._modules = dict(encoder._modules, layer=nn.ModuleList(layers))
    if not final_norm:
        encoder._modules["emb_layer_norm_after"] = None
    view = copy.copy(esm)
    view._modules = dict(view._modules, encoder=encoder)
    return view


def row_key(ids: torch.Tensor) -> bytes:
    """A sequence's identity in the prefix cache: its (cropped) token ids, unpadded. The cache hashes it."""
    return ids.to("cpu", torch.int16).numpy().tobytes()


@torch.no_grad()
def prefix_forward(
    prefix: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, lengths: Sequence[int] | None = None
) -> list[torch.Tensor]:
    """The prefix's output for each row, unpadded: a list of (length_i, H) tensors (``lengths``: the rows' real
    lengths where the caller knows them, so nothing is read back from the device)."""
    hidden = prefix(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    if lengths is None:
        lengths = attention_mask.sum(-1).tolist()
    return [hidden[i, :n] for i, n in enumerate(lengths)]


def padded_states(
    states: Sequence[torch.Tensor], lengths: Sequence[int], width: int, device: torch.device
) -> torch.Tensor:
    """(N, width, H) on ``device``: row i holds ``states[i]`` (its first ``lengths[i]`` positions), zeros after.
    States the cache returns live on the host: they are assembled there (in page-locked memory for a GPU) and go to
    the device in one copy, not one per row."""
    state = states[0]
    on_host = all(s.device.type == "cpu" for s in states)
    where = torch.device("cpu") if on_host else device
    hidden = torch.zeros(
        (len(states), width, state.shape[-1]), dtype=state.dtype, device=where,
        pin_memory=on_host and device.type == "cuda",
    )  # fmt: skip
    for i, (s, n) in enumerate(zip(states, lengths, strict=True)):
        hidden[i, :n] = s.to(where)
    return hidden.to(device, non_blocking=True)


class PrefixEncoder(nn.Module):
    """A drop-in for :class:`~protpeft.models.classifier.ProteinEncoder` (same inputs, same parameters and state
    names: only ``backbone`` is a submodule) that reads layers 0..k-1 from ``lookup`` instead of computing them.

    ``lookup(keys, compute)`` returns one (length, H) tensor per row key, calling ``compute(rows)`` (row indices)
    for those it does not hold.
    """

    def __init__(
        self,
        backbone: nn.Module,
        k: int,
        pooling: str,
        special_ids: tuple[int, ...],
        lookup: Callable[[list[bytes], Callable[[list[int]], list[torch.Tensor]]], list[torch.Tensor]],
        map_frozen: Callable[[dict[str, torch.Tensor]], int] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.k, self.pooling, self.special_ids, self.lookup = k, pooling, special_ids, lookup
        self.map_frozen = map_frozen
        """Moves frozen CPU tensors to a file mapping (``PrefixCache.map_frozen``): see :meth:`map_prefix`."""
        esm = esm_model(backbone)
        layers = list(esm.encoder.layer)
        # plain attributes, not submodules: the model's parameters and state dict stay those of ProteinEncoder
        self.__dict__["prefix"] = _view(esm, layers[:k], final_norm=False)
        self.__dict__["suffix"] = _view(esm, layers[k:], final_norm=True)

    @property
    def hidden_size(self) -> int:
        return self.backbone.config.hidden_size

    def prefix_parameters(self) -> dict[str, torch.Tensor]:
        """The frozen parameters only layers 0..k-1 (and the embeddings) use, by name within ``EsmModel``."""
        esm = esm_model(self.backbone)
        used_above = {id(p) for layer in esm.encoder.layer[self.k :] for p in layer.parameters()}
        used_above |= {id(p) for p in esm.encoder.emb_layer_norm_after.parameters()}
        return {
            name: param
            for name, param in esm.named_parameters()
            if id(param) not in used_above and not param.requires_grad and not name.startswith("contact_head.")
        }

    def map_prefix(self) -> int:
        """With the cache holding what the run reads, layers 0..k-1 compute only on a miss: keep their weights in a
        file mapping instead of the process's memory (CPU; the model stays whole: a miss reads the pages back).
        Returns the bytes mapped (0 where there is nothing to map or no store)."""
        params = self.prefix_parameters()
        if self.map_frozen is None or not params or any(p.device.type != "cpu" for p in params.values()):
            return 0
        return self.map_frozen(params)

    def cached_input(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The states entering layer k of a call's rows: read from the cache (or computed where it has none),
        padded with zeros to the call's width. The rows' keys need their token ids on the host: one copy back
        from an accelerator (of ids and mask together), not one per row."""
        if input_ids.device.type == "cpu":
            ids, mask = input_ids, attention_mask
        else:
            ids, mask = torch.stack((input_ids, attention_mask)).cpu()
        lengths = mask.sum(-1).tolist()
        keys = [row_key(ids[i, :n]) for i, n in enumerate(lengths)]

        def compute(rows: list[int]) -> list[torch.Tensor]:
            return prefix_forward(self.prefix, input_ids[rows], attention_mask[rows], [lengths[r] for r in rows])

        states = self.lookup(keys, compute)
        hidden = padded_states(states, lengths, input_ids.shape[1], input_ids.device)
        return hidden.to(next(self.backbone.parameters()).dtype)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.cached_input(input_ids, attention_mask)
        out = self.suffix(inputs_embeds=hidden, attention_mask=attention_mask).last_hidden_state
        return pool_hidden_states(out, input_ids, attention_mask, self.pooling, self.special_ids)
