"""evaluate's metrics against scikit-learn and hand-computed values on fixed arrays."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, cohen_kappa_score, f1_score, roc_auc_score

from medalign.metrics.evaluation import (at_threshold, expected_calibration_error, reliability, sensitivity_threshold,
                                         summary, youden_threshold)

Y = np.array([0, 0, 0, 0, 1, 1, 1, 0, 1, 1])
P1 = np.array([0.1, 0.3, 0.35, 0.6, 0.4, 0.7, 0.8, 0.2, 0.9, 0.55])
PROBS = np.stack([1 - P1, P1], 1)


def test_binary_summary_matches_sklearn():
    m = summary(Y, PROBS, ["normal", "pneumonia"])
    assert m["auroc"] == pytest.approx(roc_auc_score(Y, P1))
    assert m["auprc"] == pytest.approx(average_precision_score(Y, P1))
    preds = (P1 > 0.5).astype(int)
    assert m["accuracy"] == pytest.approx((preds == Y).mean())
    assert m["f1_macro"] == pytest.approx(f1_score(Y, preds, average="macro"))
    assert m["kappa"] == pytest.approx(cohen_kappa_score(Y, preds))
    assert m["brier"] == pytest.approx(np.mean((P1 - Y) ** 2))
    assert m["confusion_matrix"]["rows_true_cols_pred"] == [[4, 1], [1, 4]]


def test_multiclass_summary_macro_and_quadratic_kappa():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    logits = rng.normal(size=(60, 3)) + 2 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = summary(y, probs, ["a", "b", "c"], ordinal=True)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    assert m["auroc_per_class"]["b"] == pytest.approx(roc_auc_score(y == 1, probs[:, 1]))
    assert m["kappa"] == pytest.approx(cohen_kappa_score(y, probs.argmax(1), weights="quadratic"))
    assert m["brier"] == pytest.approx(np.mean(((probs - np.eye(3)[y]) ** 2).sum(1)))


def test_a_class_missing_from_the_rows_leaves_auroc_undefined():
    m = summary(np.zeros(4, int), PROBS[:4], ["normal", "pneumonia"])
    assert m["auroc"] is None and m["auprc"] is None and m["auroc_per_class"] == {}


def test_ece_by_hand():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right): bins [0.8667, 0.9333) and [0.6-ish]
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    y = np.array([0, 1, 1])
    assert expected_calibration_error(y, probs) == pytest.approx(2 / 3 * abs(0.5 - 0.9) + 1 / 3 * abs(1 - 0.6))
    bars = [b for b in reliability(y, probs) if b["n"]]
    assert [(b["n"], b["accuracy"]) for b in bars] == [(1, 1.0), (2, 0.5)]


def test_operating_points():
    t = youden_threshold(Y, P1)
    at = at_threshold(Y, P1, t)
    best = max(at_threshold(Y, P1, c)["sensitivity"] + at_threshold(Y, P1, c)["specificity"] for c in P1)
    assert at["sensitivity"] + at["specificity"] == pytest.approx(best)
    s = sensitivity_threshold(Y, P1, 1.0)
    assert at_threshold(Y, P1, s)["sensitivity"] == 1.0 and s == pytest.approx(0.4)  # the lowest positive's score
    fixed = at_threshold(Y, P1, 0.5)
    assert (fixed["sensitivity"], fixed["specificity"], fixed["ppv"]) == (0.8, 0.8, 0.8)
    assert fixed["f1"] == pytest.approx(f1_score(Y, P1 >= 0.5))


@pytest.mark.parametrize("n_classes", [2, 3])
def test_the_resampling_metrics_equal_sklearns(n_classes):
    from medalign.metrics import fast
    rng = np.random.default_rng(n_classes)
    y = rng.integers(0, n_classes, 200)
    logits = rng.normal(size=(200, n_classes)) + 1.5 * np.eye(n_classes)[y]
    probs = np.round(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), 2)  # rounded: ties, as real outputs have
    probs /= probs.sum(1, keepdims=True)
    ordinal = n_classes == 3
    got, want = fast.scores(y, probs, ordinal, threshold=0.5), summary(y, probs, list("abc"[:n_classes]), ordinal)
    for k in ("auroc", "auprc", "accuracy", "balanced_accuracy", "f1_macro", "kappa", "ece", "brier"):
        assert got[k] == pytest.approx(want[k], abs=1e-12), k
    if n_classes == 2:
        ref = at_threshold(y, probs[:, 1], 0.5)
        assert all(got[k] == pytest.approx(ref[k], abs=1e-12) for k in ("sensitivity", "specificity", "ppv", "npv", "f1"))
