"""Metrics for ordinal grading and multi-label tasks, from scikit-learn."""
from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.metrics import (accuracy_score, average_precision_score, cohen_kappa_score,
                             confusion_matrix, f1_score, mean_absolute_error, roc_auc_score)


def ordinal_metrics(grades: np.ndarray, pred_grades: np.ndarray, grade_names: list[str]) -> dict:
    """Agreement of predicted with true grades: quadratic-weighted kappa, mean absolute error."""
    labels = list(range(len(grade_names)))
    with warnings.catch_warnings():
        # a single grade shared by truth and predictions leaves kappa 0/0: we report None instead
        warnings.simplefilter("ignore")
        kappa = float(cohen_kappa_score(grades, pred_grades, labels=labels, weights="quadratic"))
    return {
        "n": int(len(grades)),
        "quadratic_kappa": None if math.isnan(kappa) else kappa,
        "mae": float(mean_absolute_error(grades, pred_grades)),
        "accuracy": float(accuracy_score(grades, pred_grades)),
        "confusion_matrix": {"classes": grade_names, "rows_true_cols_pred":
                             confusion_matrix(grades, pred_grades, labels=labels).tolist()},
        "support": {g: int((grades == i).sum()) for i, g in enumerate(grade_names)},
    }


def multilabel_metrics(targets: np.ndarray, probs: np.ndarray, classes: list[str],
                       threshold: float = 0.5) -> dict:
    """Ranking metrics macro-averaged over the classes with both positives and negatives;
    F1 and exact match (all labels right) on probabilities thresholded at `threshold`."""
    scored = [c for c in range(len(classes)) if len(np.unique(targets[:, c])) == 2]
    aurocs = {classes[c]: float(roc_auc_score(targets[:, c], probs[:, c])) for c in scored}
    aps = [average_precision_score(targets[:, c], probs[:, c]) for c in scored]
    preds = (probs >= threshold).astype(int)
    return {
        "n": int(len(targets)),
        "auroc": float(np.mean(list(aurocs.values()))) if scored else None,
        "auroc_per_class": {c: aurocs.get(c) for c in classes},
        "average_precision": float(np.mean(aps)) if scored else None,
        "f1_macro": float(f1_score(targets, preds, average="macro", zero_division=0)),
        "exact_match": float(accuracy_score(targets, preds)),
        "support": {c: int(targets[:, i].sum()) for i, c in enumerate(classes)},
    }
