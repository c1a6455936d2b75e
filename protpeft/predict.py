"""``Predictor``: a run directory + its base model → probabilities for protein pairs or single sequences."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protpeft.artifact import RunArtifact, check_artifact_files
from protpeft.data.alphabet import first_bad_letter, normalize_sequence
from protpeft.data.collate import member_inputs
from protpeft.data.tokens import TokenEncoder
from protpeft.models.assembly import assemble_task_model
from protpeft.models.classifier import ProteinClassifier
from protpeft.tasks import TASKS

__all__ = ["Predictor", "clean_examples", "clean_sequences", "predict_batches"]


def clean_examples(examples: Sequence[tuple[str, ...]], members: int, what: str) -> list[tuple[str, ...]]:
    """:func:`clean_sequences` over each member of tuples of ``members`` sequences."""
    columns = [clean_sequences([e[m] for e in examples], what) for m in range(members)]
    return list(zip(*columns, strict=True))


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
        columns = [[examples[i][m] for i in idx] for m in range(model.members)]
        inputs = {k: v.to(device) for k, v in member_inputs(tokens, columns).items()}  # as in training
        out[idx] = torch.sigmoid(model(**inputs).float()).cpu().numpy()
    return out


class Predictor:
    """A ready model for one task: ``predict(pairs=...)`` for PPI, ``predict(sequences=...)`` for symmetry (the
    task's ``inputs``), or ``predict_examples`` with tuples of member sequences for any task."""

    def __init__(
        self, model: ProteinClassifier, tokens: TokenEncoder, artifact: RunArtifact | Mapping[str, Any], device="cpu"
    ) -> None:
        """``artifact``: the run's :class:`~protpeft.artifact.RunArtifact` (or its ``protpeft.json`` mapping)."""
        self.model = model.to(device).eval()
        self.tokens = tokens
        self.artifact = artifact if isinstance(artifact, RunArtifact) else RunArtifact.from_json(artifact)
        self.device = torch.device(device)
        self.task = self.artifact.task
        self.label_names: tuple[str, ...] = tuple(self.artifact.label_names)

    @classmethod
    def from_run_dir(
        cls, run_dir: str | Path, base: str | None = None, device: str = "cpu", check_fingerprint: bool = True
    ) -> Predictor:
        """Load a run directory (safetensors/JSON only). ``base`` replaces the recorded base model location (e.g.
        a local copy of the hub checkpoint); its weights must have the recorded fingerprint."""
        artifact = check_artifact_files(run_dir)
        model, tokens = assemble_task_model(artifact, run_dir, base, check_fingerprint=check_fingerprint)
        return cls(model, tokens, artifact, device)

    def predict(
        self,
        pairs: Sequence[Sequence[str]] | None = None,
        sequences: Sequence[str] | None = None,
        batch_size: int = 16,
    ) -> np.ndarray:
        """Probabilities: (N,) for PPI pairs, (N, classes) for symmetry sequences."""
        spec = TASKS[self.task]
        given = {"pairs": pairs, "sequences": sequences}
        items = given.pop(spec.inputs)
        if items is None or any(other is not None for other in given.values()):
            raise ValueError(f"this is a {spec.title} model: pass {spec.inputs}={spec.input_example}")
        return self.predict_examples(spec.as_examples(items), batch_size)

    def predict_examples(self, examples: Sequence[tuple[str, ...]], batch_size: int = 16) -> np.ndarray:
        """Probabilities for examples given as tuples of member sequences (pairs, or 1-tuples), checked and
        normalised like ``predict``'s inputs; shaped as ``predict`` returns them."""
        spec = TASKS[self.task]
        examples = clean_examples(examples, spec.members, spec.item)
        return spec.probabilities(predict_batches(self.model, self.tokens, examples, batch_size, self.device))

    def labels(self, probs: np.ndarray, threshold: float = 0.5) -> list:
        """Predicted labels: 0/1 per pair (PPI) or the list of class names per sequence (symmetry). Reads only
        ``task`` and ``label_names``."""
        return TASKS[self.task].labels(probs, self.label_names, threshold)
