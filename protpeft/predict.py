"""``Predictor``: a run directory + its base model → probabilities for protein pairs or single sequences."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protpeft.artifact import ArtifactError, check_artifact_files, read_head
from protpeft.data.alphabet import first_bad_letter, normalize_sequence
from protpeft.data.tokens import TokenEncoder
from protpeft.models.backbone import backbone_fingerprint, load_backbone, load_tokenizer, quiet_hf
from protpeft.models.classifier import ClassificationHead, ProteinClassifier, ProteinEncoder
from protpeft.tasks import TASKS

__all__ = ["Predictor", "clean_sequences", "predict_batches"]


def clean_sequences(sequences: Sequence[str], what: str = "sequence") -> list[str]:
    """Normalise as the readers do and refuse letters ESM has no token for, naming the item."""
    cleaned = []
    for i, raw in enumerate(sequences):
        seq = normalize_sequence(raw)
        if not seq:
            raise ValueError(f"{what} {i} is empty")
        bad = first_bad_letter(seq)
        if bad is not None:
            raise ValueError(f"{what} {i} contains {bad[1]!r} at position {bad[0]}, which is not an amino-acid letter")
        cleaned.append(seq)
    return cleaned


@torch.no_grad()
def predict_batches(
    model: ProteinClassifier,
    tokens: TokenEncoder,
    examples: Sequence[tuple[str, ...]],
    batch_size: int,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Sigmoid probabilities (N, outputs) for examples of member sequences, batched by length (order kept)."""
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: max(len(s) for s in examples[i]))
    out = np.zeros((len(examples), model.head.net[-1].out_features), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        members = [examples[i][m] for m in range(model.members) for i in idx]  # member-major, as in training
        inputs = {k: v.to(device) for k, v in tokens.batch(members).items()}
        out[idx] = torch.sigmoid(model(**inputs).float()).cpu().numpy()
    return out


class Predictor:
    """A ready model for one task. ``predict(pairs=...)`` for PPI, ``predict(sequences=...)`` for symmetry."""

    def __init__(self, model: ProteinClassifier, tokens: TokenEncoder, meta: dict[str, Any], device="cpu") -> None:
        self.model = model.to(device).eval()
        self.tokens = tokens
        self.meta = meta
        self.device = torch.device(device)
        self.task = meta["task"]
        self.label_names: tuple[str, ...] = tuple(meta["label_names"])

    @classmethod
    def from_run_dir(
        cls, run_dir: str | Path, base: str | None = None, device: str = "cpu", check_fingerprint: bool = True
    ) -> Predictor:
        """Load a run directory (safetensors/JSON only). ``base`` replaces the recorded base model location (e.g.
        a local copy of the hub checkpoint); its weights must have the recorded fingerprint."""
        run_dir = Path(run_dir)
        meta = check_artifact_files(run_dir)
        base = base or meta["base_model"]
        mode = meta["mode"]
        backbone = load_backbone(str(run_dir / "backbone") if mode == "full" else base)
        if mode != "full" and check_fingerprint:
            found = backbone_fingerprint(backbone)
            if found != meta["base_fingerprint"]:
                raise ArtifactError(
                    f"{run_dir}: base model {base!r} has fingerprint {found}, but this {mode} artefact was trained on "
                    f"{meta['base_model']!r} with fingerprint {meta['base_fingerprint']}; refusing to combine them"
                )
        if mode == "lora":
            from peft import PeftModel

            with quiet_hf():
                backbone = PeftModel.from_pretrained(backbone, run_dir)
        tokenizer = load_tokenizer(str(run_dir / "backbone") if mode == "full" else base)
        tokens = TokenEncoder(tokenizer, crop=int(meta["crop"]))
        spec = TASKS[meta["task"]]
        head_state = read_head(run_dir)
        hidden = head_state["net.1.weight"].shape[0]
        head = ClassificationHead(backbone.config.hidden_size, hidden, spec.outputs, dropout=0.0)
        head.load_state_dict(head_state)
        model = ProteinClassifier(ProteinEncoder(backbone, meta["pooling"], tokens.special_ids), head, spec.members)
        return cls(model, tokens, meta, device)

    def predict(
        self,
        pairs: Sequence[Sequence[str]] | None = None,
        sequences: Sequence[str] | None = None,
        batch_size: int = 16,
    ) -> np.ndarray:
        """Probabilities: (N,) for PPI pairs, (N, classes) for symmetry sequences."""
        if self.task == "ppi":
            if pairs is None or sequences is not None:
                raise ValueError("this is a PPI model: pass pairs=[(seq_a, seq_b), ...]")
            bad = [i for i, p in enumerate(pairs) if len(p) != 2]
            if bad:
                raise ValueError(f"pair {bad[0]} does not hold exactly two sequences")
            a = clean_sequences([p[0] for p in pairs], "pair")
            b = clean_sequences([p[1] for p in pairs], "pair")
            examples = list(zip(a, b, strict=True))
            return predict_batches(self.model, self.tokens, examples, batch_size, self.device)[:, 0]
        if sequences is None or pairs is not None:
            raise ValueError("this is a symmetry model: pass sequences=[seq, ...]")
        examples = [(s,) for s in clean_sequences(sequences)]
        return predict_batches(self.model, self.tokens, examples, batch_size, self.device)

    def labels(self, probs: np.ndarray, threshold: float = 0.5) -> list:
        """Predicted labels: 0/1 per pair (PPI) or the list of class names per sequence (symmetry)."""
        if self.task == "ppi":
            return [int(p >= threshold) for p in probs]
        return [[n for n, p in zip(self.label_names, row, strict=True) if p >= threshold] for row in probs]
