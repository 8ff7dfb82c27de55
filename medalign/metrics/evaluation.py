"""What `evaluate` reports for a single-label classifier, from scikit-learn: discrimination (AUROC,
AUPRC), agreement (accuracy, balanced accuracy, F1, Cohen's kappa), a binary operating point chosen
on validation, and calibration (expected calibration error, Brier score)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score, brier_score_loss,
                             cohen_kappa_score, confusion_matrix, f1_score, roc_auc_score, roc_curve)

ECE_BINS = 15


def summary(targets: np.ndarray, probs: np.ndarray, classes: list[str], ordinal: bool = False) -> dict:
    """The threshold-free metrics and the argmax prediction's; per-class values keyed by class name."""
    preds = probs.argmax(1)
    labels = list(range(len(classes)))
    present = [i for i in labels if (targets == i).any() and not (targets == i).all()]
    out = {
        "n": int(len(targets)),
        "accuracy": float(accuracy_score(targets, preds)),
        "balanced_accuracy": float(balanced_accuracy_score(targets, preds)),
        "f1_macro": float(f1_score(targets, preds, labels=labels, average="macro", zero_division=0)),
        "kappa": float(cohen_kappa_score(targets, preds, labels=labels, weights="quadratic" if ordinal else None)),
        "auroc_per_class": {classes[i]: float(roc_auc_score(targets == i, probs[:, i])) for i in present},
        "auprc_per_class": {classes[i]: float(average_precision_score(targets == i, probs[:, i])) for i in present},
        "ece": expected_calibration_error(targets, probs),
        "brier": float(brier_score_loss(targets, probs, labels=labels) if len(classes) > 2
                       else brier_score_loss(targets, probs[:, 1], pos_label=1)),
        "confusion_matrix": {"classes": classes, "rows_true_cols_pred":
                             confusion_matrix(targets, preds, labels=labels).tolist()},
        "support": {c: int((targets == i).sum()) for i, c in enumerate(classes)},
    }
    if len(present) == len(labels):
        # binary: the positive (second) class's AUROC, as the rest of medalign reports it
        out["auroc"] = out["auroc_per_class"][classes[1]] if len(classes) == 2 else float(
            roc_auc_score(targets, probs, multi_class="ovr", labels=labels))
        out["auprc"] = out["auprc_per_class"][classes[1]] if len(classes) == 2 else float(
            np.mean(list(out["auprc_per_class"].values())))
    else:
        out["auroc"] = out["auprc"] = None
    return out


def expected_calibration_error(targets: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE over equal-width confidence bins (Guo et al. 2017). scikit-learn has the binary
    reliability curve (`calibration_curve`) but no ECE, and the top-label form covers any class count."""
    confidence, preds = probs.max(1), probs.argmax(1)
    correct = (preds == targets).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def reliability(targets: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Per confidence bin: its count, mean confidence and accuracy (the reliability diagram's bars)."""
    confidence, correct = probs.max(1), (probs.argmax(1) == targets)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    return [{"low": float(edges[b]), "high": float(edges[b + 1]), "n": int((which == b).sum()),
             "confidence": float(confidence[which == b].mean()) if (which == b).any() else None,
             "accuracy": float(correct[which == b].mean()) if (which == b).any() else None} for b in range(bins)]


def scalar(name: str, targets: np.ndarray, probs: np.ndarray, ordinal: bool = False) -> float | None:
    """One headline metric alone (what a bootstrap resample needs, without the whole summary)."""
    n = probs.shape[1]
    labels = list(range(n))
    if name in ("auroc", "auprc"):
        if len(np.unique(targets)) < n:  # a class absent: undefined (one-vs-rest needs every class)
            return None
        if n == 2:
            fn = roc_auc_score if name == "auroc" else average_precision_score
            return float(fn(targets, probs[:, 1]))
        if name == "auroc":
            return float(roc_auc_score(targets, probs, multi_class="ovr", labels=labels))
        return float(np.mean([average_precision_score(targets == i, probs[:, i]) for i in labels]))
    if name == "ece":
        return expected_calibration_error(targets, probs)
    if name == "brier":
        return float(brier_score_loss(targets, probs, labels=labels) if n > 2
                     else brier_score_loss(targets, probs[:, 1], pos_label=1))
    preds = probs.argmax(1)
    if name == "accuracy":
        return float((preds == targets).mean())
    if name == "balanced_accuracy":
        return float(balanced_accuracy_score(targets, preds))
    if name == "f1_macro":
        return float(f1_score(targets, preds, labels=labels, average="macro", zero_division=0))
    if name == "kappa":
        return float(cohen_kappa_score(targets, preds, labels=labels, weights="quadratic" if ordinal else None))
    raise KeyError(name)


# -- a binary operating point -----------------------------------------------------------------

def youden_threshold(targets: np.ndarray, positive: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 on these rows (choose it on val)."""
    fpr, tpr, thresholds = roc_curve(targets, positive)
    return float(min(thresholds[int(np.argmax(tpr - fpr))], 1.0))


def sensitivity_threshold(targets: np.ndarray, positive: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity on these rows reaches `target` (the most specific one)."""
    _, tpr, thresholds = roc_curve(targets, positive)
    return float(min(thresholds[int(np.argmax(tpr >= target))], 1.0))


def at_threshold(targets: np.ndarray, positive: np.ndarray, threshold: float) -> dict:
    """Sensitivity, specificity, PPV, NPV and F1 when `positive >= threshold` predicts the positive class."""
    preds = (positive >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(targets, preds, labels=[0, 1]).ravel()

    def ratio(a, b):
        return float(a / (a + b)) if a + b else None

    return {"threshold": float(threshold), "sensitivity": ratio(tp, fn), "specificity": ratio(tn, fp),
            "ppv": ratio(tp, fp), "npv": ratio(tn, fn), "f1": float(f1_score(targets, preds, zero_division=0))}
