"""Metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from protpeft.metrics import binary_metrics, multilabel_metrics

pytestmark = pytest.mark.unit


def test_binary_metrics_by_hand() -> None:
    probs = np.array([0.9, 0.8, 0.3, 0.6, 0.1, 0.2])
    targets = np.array([1, 1, 1, 0, 0, 0])
    m = binary_metrics(probs, targets)  # tp 2, fn 1, fp 1, tn 2
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3)
    assert m["mcc"] == pytest.approx((2 * 2 - 1 * 1) / np.sqrt(3 * 3 * 3 * 3))
    assert m["auroc"] == pytest.approx(8 / 9)
    assert m["aupr"] == pytest.approx((1 + 1 + 3 / 4) / 3)


def test_multilabel_macro_and_per_class() -> None:
    names = ["C1", "C2", "D2"]
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.7, 0.6, 0.1], [0.1, 0.3, 0.2]])
    m = multilabel_metrics(probs, targets, names)
    assert m["aupr/C1"] == 1.0 and m["aupr/C2"] == 1.0
    assert "aupr/D2" not in m  # absent in targets and predictions: undefined, left out of the macro average
    assert m["aupr"] == 1.0 and m["subset_accuracy"] == 1.0
    assert m["positive_rate"] == pytest.approx(4 / 12)


def _sklearn_reference(probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    from sklearn import metrics as skm

    preds = (probs >= 0.5).astype(int)
    out = {"f1": skm.f1_score(targets, preds, zero_division=0), "mcc": skm.matthews_corrcoef(targets, preds)}
    if 0 < targets.sum() < len(targets):
        out |= {"aupr": skm.average_precision_score(targets, probs), "auroc": skm.roc_auc_score(targets, probs)}
    return out


@pytest.mark.parametrize(
    ("n", "levels", "positive_rate"),
    [(7, None, 0.5), (200, None, 0.1), (500, 5, 0.5), (300, 3, 0.9), (50, 2, 0.3), (40, None, 0.0), (40, None, 1.0)],
    ids=["tiny", "rare-positives", "many-ties", "common-positives", "two-scores", "no-positives", "all-positives"],
)
def test_formulas_equal_scikit_learns(n: int, levels: int | None, positive_rate: float) -> None:
    """The NumPy formulas give scikit-learn's numbers, ties (``levels`` distinct scores) and one-class sets too."""
    rng = np.random.default_rng(n)
    targets = (rng.random(n) < positive_rate).astype(int)
    probs = rng.random(n) * 0.6 + targets * 0.3
    if levels:
        probs = np.round(probs * (levels - 1)) / (levels - 1)
    ours, theirs = binary_metrics(probs, targets), _sklearn_reference(probs, targets)
    assert {k: ours[k] for k in theirs} == pytest.approx(theirs, abs=1e-12)
    assert ("aupr" in ours) == ("aupr" in theirs)


def test_metrics_do_not_import_scikit_learn() -> None:
    """Every Ray worker and Tune trial evaluates: ``sklearn.metrics`` would add ~1.5 CPU-s to each one's start-up."""
    import subprocess
    import sys

    code = "import sys, protpeft.metrics, protpeft.trainer.loop; print('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
