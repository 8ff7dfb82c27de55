"""Classification metrics on predicted probabilities, from scikit-learn."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, roc_auc_score


def classification_metrics(targets: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    preds = probs.argmax(1)
    labels = list(range(len(classes)))
    return {
        "n": int(len(targets)),
        "accuracy": float(accuracy_score(targets, preds)),
        "balanced_accuracy": float(balanced_accuracy_score(targets, preds)),
        "auroc": auroc(targets, probs),
        "confusion_matrix": {"classes": classes, "rows_true_cols_pred":
                             confusion_matrix(targets, preds, labels=labels).tolist()},
        "support": {c: int((targets == i).sum()) for i, c in enumerate(classes)},
    }


def auroc(targets: np.ndarray, probs: np.ndarray) -> float | None:
    """Binary AUROC on the positive (second) class, one-vs-rest macro for more; None if undefined."""
    if len(np.unique(targets)) < 2:
        return None
    if probs.shape[1] == 2:
        return float(roc_auc_score(targets, probs[:, 1]))
    return float(roc_auc_score(targets, probs, multi_class="ovr", labels=list(range(probs.shape[1]))))
