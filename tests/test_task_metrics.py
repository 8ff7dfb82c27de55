"""Ordinal and multi-label metrics against values derived by hand."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from medalign.metrics.tasks import multilabel_metrics, ordinal_metrics

GRADES = ["none", "mild", "moderate", "severe"]


def test_quadratic_kappa_matches_the_formula():
    true = np.array([0, 0, 1, 1, 2, 2, 3, 3, 3, 1])
    pred = np.array([0, 1, 1, 2, 2, 2, 3, 2, 3, 0])
    k = len(GRADES)
    observed = np.zeros((k, k))
    np.add.at(observed, (true, pred), 1)
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    i, j = np.indices((k, k))
    w = (i - j) ** 2 / (k - 1) ** 2
    kappa = 1 - (w * observed).sum() / (w * expected).sum()

    got = ordinal_metrics(true, pred, GRADES)
    assert got["quadratic_kappa"] == pytest.approx(kappa)
    assert got["mae"] == pytest.approx(np.abs(true - pred).mean())
    assert got["accuracy"] == pytest.approx(0.6)
    assert got["confusion_matrix"]["rows_true_cols_pred"] == observed.astype(int).tolist()
    assert got["support"] == {"none": 2, "mild": 3, "moderate": 2, "severe": 3}


def test_perfect_grading():
    true = np.array([0, 1, 2, 3, 2])
    got = ordinal_metrics(true, true, GRADES)
    assert got["quadratic_kappa"] == pytest.approx(1.0)
    assert got["mae"] == 0.0


def test_kappa_is_none_for_a_single_grade():
    true = np.array([2, 2, 2])
    assert ordinal_metrics(true, true, GRADES)["quadratic_kappa"] is None


def test_multilabel_auroc_skips_classes_without_both_values():
    classes = ["effusion", "nodule", "fracture"]
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]])
    probs = np.array([[.9, .2, .1], [.3, .7, .4], [.6, .4, .2],
                      [.4, .1, .3], [.2, .8, .6], [.1, .6, .2]])
    got = multilabel_metrics(targets, probs, classes)

    by_hand = [roc_auc_score(targets[:, c], probs[:, c]) for c in (0, 1)]
    assert got["auroc_per_class"]["fracture"] is None
    assert got["auroc_per_class"]["effusion"] == pytest.approx(by_hand[0])
    assert got["auroc"] == pytest.approx(np.mean(by_hand))
    assert got["support"] == {"effusion": 3, "nodule": 3, "fracture": 0}
    assert got["average_precision"] == pytest.approx(
        np.mean([average_precision_score(targets[:, c], probs[:, c]) for c in (0, 1)]))
    # at 0.5, row 2 misses its nodule and row 4 gets all three wrong; the other four are exact
    assert got["exact_match"] == pytest.approx(4 / 6)


def test_multilabel_without_any_scorable_class():
    targets = np.zeros((3, 2), dtype=int)
    got = multilabel_metrics(targets, np.full((3, 2), 0.2), ["a", "b"])
    assert got["auroc"] is None and got["average_precision"] is None
    assert got["exact_match"] == 1.0
