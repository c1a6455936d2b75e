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
