"""Classification metrics as flat dicts: binary (PPI) and multi-label macro + per-class (symmetry).

Threshold metrics use p ≥ 0.5. Ranking metrics (AUPR, AUROC) are left out for a class whose targets are all one
value, since they are undefined there; the macro average runs over the classes where they are defined.

The formulas are scikit-learn's (``average_precision_score``, ``roc_auc_score``, ``f1_score``,
``matthews_corrcoef``), written out in NumPy and checked equal to scikit-learn in ``tests/unit/test_metrics.py``:
every Ray Train worker, Tune trial and CLI process evaluates, and importing ``sklearn.metrics`` costs each of them
about 1.5 CPU-seconds (a fifth of a training worker's start-up) for four formulas.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from protpeft.tasks import TASKS

__all__ = ["binary_metrics", "multilabel_metrics", "ranking_metrics", "single_label_metrics", "task_metrics"]

THRESHOLD = 0.5


def binary_metrics(probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """AUPR, AUROC, accuracy, precision, recall, F1, MCC, specificity and the positive rate of one binary task."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    targets = np.asarray(targets).reshape(-1).astype(int)
    preds = (probs >= THRESHOLD).astype(int)
    tp, fp = int((preds & targets).sum()), int((preds & (1 - targets)).sum())
    fn, tn = int(((1 - preds) & targets).sum()), int(((1 - preds) & (1 - targets)).sum())
    out: dict[str, float] = {}
    if 0 < targets.sum() < len(targets):
        out["aupr"], out["auroc"] = ranking_metrics(probs, targets)
    out.update(
        accuracy=(tp + tn) / max(1, len(targets)),
        precision=tp / (tp + fp) if tp + fp else 0.0,
        recall=tp / (tp + fn) if tp + fn else 0.0,
        f1=2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        mcc=matthews_corrcoef(tp, fp, fn, tn),
        specificity=tn / (tn + fp) if tn + fp else 0.0,
        positive_rate=float(targets.mean()) if len(targets) else 0.0,
    )
    return {key: float(value) for key, value in out.items()}


def ranking_metrics(scores: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """(average precision, ROC AUC) of ``scores`` for binary ``targets`` holding both classes, with ties as
    scikit-learn treats them: one curve point per distinct score."""
    order = np.argsort(scores, kind="mergesort")[::-1]
    ranked, hits = scores[order], targets[order]
    cut = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]  # last index of each distinct score
    tps = np.cumsum(hits)[cut].astype(np.float64)
    fps = 1 + cut - tps
    recall_steps = np.diff(np.r_[0.0, tps]) / tps[-1]
    average_precision = float(np.sum(recall_steps * tps / (tps + fps)))
    tpr, fpr = np.r_[0.0, tps / tps[-1]], np.r_[0.0, fps / fps[-1]]
    auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    return average_precision, auroc


def matthews_corrcoef(tp: int, fp: int, fn: int, tn: int) -> float:
    """MCC from the confusion counts; 0 where it is undefined (a row or column of the matrix is empty)."""
    denominator = float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    return (tp * tn - fp * fn) / np.sqrt(denominator) if denominator else 0.0


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
