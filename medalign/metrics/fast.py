"""The headline metrics again, in plain numpy, for bootstrap resamples: scikit-learn's input checks
cost about a millisecond a call, and an evaluation with intervals makes tens of thousands of calls.
Point estimates come from scikit-learn (metrics/evaluation.py); tests/test_evaluation_metrics.py
checks that these agree with it to 1e-12 on fixed arrays."""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def scores(targets: np.ndarray, probs: np.ndarray, ordinal: bool = False, threshold: float | None = None,
           ece_bins: int = 15) -> dict[str, float | None]:
    n_classes = probs.shape[1]
    preds = probs.argmax(1)
    cm = np.bincount(targets * n_classes + preds, minlength=n_classes**2).reshape(n_classes, n_classes)
    support = cm.sum(1)
    out = {"accuracy": float(np.trace(cm) / cm.sum()),
           "balanced_accuracy": float(np.mean(np.diag(cm)[support > 0] / support[support > 0])),
           "f1_macro": _f1_macro(cm), "kappa": _kappa(cm, ordinal), "ece": _ece(targets, probs, ece_bins),
           "brier": float(np.mean(((probs - np.eye(n_classes)[targets]) ** 2).sum(1)) / (2 if n_classes == 2 else 1))}
    if (support > 0).all():
        if n_classes == 2:
            out["auroc"], out["auprc"] = auroc(targets == 1, probs[:, 1]), auprc(targets == 1, probs[:, 1])
        else:
            out["auroc"] = float(np.mean([auroc(targets == i, probs[:, i]) for i in range(n_classes)]))
            out["auprc"] = float(np.mean([auprc(targets == i, probs[:, i]) for i in range(n_classes)]))
    else:
        out["auroc"] = out["auprc"] = None
    if threshold is not None and n_classes == 2:
        out.update(rates(targets, probs[:, 1], threshold))
    return out


def auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney U over (positives x negatives), ties counted half."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    return float((rankdata(score)[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auprc(positive: np.ndarray, score: np.ndarray) -> float:
    """Average precision as scikit-learn defines it: sum over thresholds of (R_n - R_n-1) P_n."""
    order = np.argsort(-score, kind="mergesort")
    s, y = score[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last row of each distinct score
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def rates(targets: np.ndarray, positive: np.ndarray, threshold: float) -> dict[str, float | None]:
    pred = positive >= threshold
    tp, fn = int((pred & (targets == 1)).sum()), int((~pred & (targets == 1)).sum())
    tn, fp = int((~pred & (targets == 0)).sum()), int((pred & (targets == 0)).sum())

    def ratio(a, b):
        return a / (a + b) if a + b else None

    return {"sensitivity": ratio(tp, fn), "specificity": ratio(tn, fp), "ppv": ratio(tp, fp), "npv": ratio(tn, fn),
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0}


def _f1_macro(cm: np.ndarray) -> float:
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1)
    return float(np.mean(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)))


def _kappa(cm: np.ndarray, ordinal: bool) -> float:
    n = len(cm)
    i, j = np.indices((n, n))
    w = (i - j) ** 2 if ordinal else (i != j).astype(float)
    expected = np.outer(cm.sum(1), cm.sum(0)) / cm.sum()
    denom = (w * expected).sum()
    return float(1 - (w * cm).sum() / denom) if denom else 0.0


def _ece(targets: np.ndarray, probs: np.ndarray, bins: int) -> float:
    confidence = probs.max(1)
    correct = probs.argmax(1) == targets
    which = np.clip(np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, correct, bins) - np.bincount(which, confidence, bins))
    return float(gap.sum() / len(targets)) if count.sum() else 0.0
