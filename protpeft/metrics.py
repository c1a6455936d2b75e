"""Classification metrics as flat dicts: binary (PPI) and multi-label macro + per-class (symmetry).

Threshold metrics use p ≥ 0.5. Ranking metrics (AUPR, AUROC) are left out for a class whose targets are all one
value, since they are undefined there; the macro average runs over the classes where they are defined.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm

from protpeft.tasks import TASKS

__all__ = ["binary_metrics", "multilabel_metrics", "single_label_metrics", "task_metrics"]

THRESHOLD = 0.5


def binary_metrics(probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """AUPR, AUROC, accuracy, precision, recall, F1, MCC, specificity and the positive rate of one binary task."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    targets = np.asarray(targets).reshape(-1).astype(int)
    preds = (probs >= THRESHOLD).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(targets, preds, labels=[0, 1]).ravel()
    out: dict[str, float] = {}
    if 0 < targets.sum() < len(targets):
        out["aupr"] = float(skm.average_precision_score(targets, probs))
        out["auroc"] = float(skm.roc_auc_score(targets, probs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out.update(
            accuracy=float((tp + tn) / max(1, len(targets))),
            precision=float(tp / (tp + fp)) if tp + fp else 0.0,
            recall=float(tp / (tp + fn)) if tp + fn else 0.0,
            f1=float(skm.f1_score(targets, preds, zero_division=0)),
            mcc=float(skm.matthews_corrcoef(targets, preds)),
            specificity=float(tn / (tn + fp)) if tn + fp else 0.0,
            positive_rate=float(targets.mean()) if len(targets) else 0.0,
        )
    return out


def multilabel_metrics(probs: np.ndarray, targets: np.ndarray, label_names: Sequence[str]) -> dict[str, float]:
    """Per-class binary metrics as ``"<metric>/<class>"`` plus their macro averages under the plain names."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets).astype(int)
    out: dict[str, float] = {}
    per_metric: dict[str, list[float]] = {}
    for k, name in enumerate(label_names):
        if targets[:, k].sum() == 0 and (probs[:, k] >= THRESHOLD).sum() == 0:
            continue  # a class absent from both targets and predictions says nothing about the model
        for metric, value in binary_metrics(probs[:, k], targets[:, k]).items():
            out[f"{metric}/{name}"] = value
            per_metric.setdefault(metric, []).append(value)
    for metric, values in per_metric.items():
        if metric != "positive_rate":
            out[metric] = float(np.mean(values))
    out["positive_rate"] = float(targets.mean()) if targets.size else 0.0
    out["subset_accuracy"] = (
        float(((probs >= THRESHOLD).astype(int) == targets).all(1).mean()) if len(targets) else 0.0
    )
    return out


def single_label_metrics(probs: np.ndarray, targets: np.ndarray, label_names: Sequence[str]) -> dict[str, float]:
    """A task with one binary output (PPI): :func:`binary_metrics` under the plain names."""
    return binary_metrics(probs, targets)


def task_metrics(task: str, probs: np.ndarray, targets: np.ndarray, label_names: Sequence[str]) -> dict[str, float]:
    """The metric function of ``task``'s :data:`~protpeft.tasks.TASKS` row."""
    return TASKS[task].metrics(probs, targets, label_names)
