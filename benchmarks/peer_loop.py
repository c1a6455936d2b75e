"""The peer: the PPI training loop a user would write with transformers + peft and no framework.

``EsmModel`` (no pooler) → mean over the attention mask → the average of the two proteins' vectors → a small head;
AdamW on whatever is trainable; the HF tokenizer with ``padding=True``, cropped to 1024 tokens as protpeft crops.
Either one backbone call per member, each padded to its own longest, or (``one_call``) one call over all 2B proteins
of the batch, padded together. LoRA is peft's ``LoraConfig`` as protpeft's paper defaults set it; frozen runs the
backbone under ``no_grad`` every step (a plain loop keeps no cache). On a GPU, ``bf16`` computes under autocast over
fp32 weights, as protpeft's engine does. Nothing here imports protpeft.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["PeerLoop"]


class PeerLoop:
    """One model and optimizer; :meth:`step` trains on one batch of pairs and returns its seconds."""

    def __init__(
        self,
        model_dir: str,
        mode: str,
        *,
        last_layers: int = 8,
        lora_dropout: float = 0.0,
        head_dropout: float = 0.0,
        head_hidden: int = 128,
        lr: float = 1e-4,
        max_length: int = 1024,
        one_call: bool = False,
        device: str = "cpu",
        bf16: bool = False,
        seed: int = 0,
    ) -> None:
        import peft
        from transformers import EsmModel, EsmTokenizer

        torch.manual_seed(seed)
        self.max_length, self.one_call, self.device = max_length, one_call, device
        self.tokenizer = EsmTokenizer.from_pretrained(model_dir)
        backbone = EsmModel.from_pretrained(model_dir, add_pooling_layer=False, use_safetensors=True)
        layers = backbone.config.num_hidden_layers
        if mode == "lora":
            config = peft.LoraConfig(
                r=8,
                lora_alpha=32,
                lora_dropout=lora_dropout,
                target_modules=["key", "value"],
                layers_to_transform=list(range(max(0, layers - last_layers), layers)),
            )
            backbone = peft.get_peft_model(backbone, config)
        elif mode == "frozen":
            backbone.requires_grad_(False)
        self.frozen = mode == "frozen"
        self.backbone = backbone.train(not self.frozen).to(device)
        hidden = backbone.config.hidden_size
        self.head = nn.Sequential(
            nn.Dropout(head_dropout), nn.Linear(hidden, head_hidden), nn.Tanh(), nn.Dropout(head_dropout),
            nn.Linear(head_hidden, 1),
        ).to(device)  # fmt: skip
        self.autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)
        params = [p for p in [*self.backbone.parameters(), *self.head.parameters()] if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=lr)

    def padded_tokens(self, sequences: Sequence[str]) -> int:
        """Tokens one backbone call over ``sequences`` processes, padding included."""
        return len(sequences) * min(max(len(s) for s in sequences) + 2, self.max_length)

    def embed(self, sequences: Sequence[str]) -> torch.Tensor:
        batch = self.tokenizer(
            list(sequences), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.backbone(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1)

    def pair_vectors(self, seqs_a: Sequence[str], seqs_b: Sequence[str]) -> torch.Tensor:
        if self.one_call:
            return self.embed([*seqs_a, *seqs_b]).view(2, len(seqs_a), -1).mean(0)
        return (self.embed(seqs_a) + self.embed(seqs_b)) / 2

    def step(self, seqs_a: Sequence[str], seqs_b: Sequence[str], labels: Sequence[float]) -> float:
        start = time.perf_counter()
        with self.autocast:
            with torch.no_grad() if self.frozen else torch.enable_grad():
                pair = self.pair_vectors(seqs_a, seqs_b)
            logits = self.head(pair).squeeze(-1).float()
            target = torch.tensor(labels, dtype=torch.float32, device=self.device)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, target)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start
