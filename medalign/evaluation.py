"""The numbers `evaluate` stands behind: every headline metric with a patient-level bootstrap
interval, a binary operating point chosen on validation (never on the rows it is scored on), and the
same per subgroup, with the gaps between subgroups and their intervals.

Point estimates are scikit-learn's (metrics/evaluation.py); resamples use the same metrics in numpy
(metrics/fast.py). Single-label tasks (classification, ordinal) get all of it; multi-label tasks
keep their own metrics (metrics/tasks.py).
"""
from __future__ import annotations

import numpy as np

from medalign.metrics import evaluation as em
from medalign.metrics import fast
from medalign.metrics.bootstrap import group_index, intervals, paired_difference
from medalign.tasks import Task

HEADLINE = ("auroc", "auprc", "accuracy", "balanced_accuracy", "f1_macro", "kappa", "ece", "brier")
RATES = ("sensitivity", "specificity", "ppv", "npv", "f1")
SUBGROUP = ("auroc", "accuracy", "sensitivity", "specificity")


def evaluate(task: Task, targets: np.ndarray, probs: np.ndarray, rows: list[dict], cfg, *,
             val: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """metrics.json's body. `cfg`: the evaluate config; `rows`: the manifest rows
    scored, in order (their group and subgroup columns); `val`: (targets, probs) on validation, which
    choose the operating point."""
    out = dict(task.metrics(targets, probs))
    if task.kind == "multilabel":
        return out
    groups = [r.get(cfg.bootstrap.group, "") for r in rows] if cfg.bootstrap.group else None
    members = group_index(groups, len(targets))
    ordinal, binary = task.kind == "ordinal", len(task.classes) == 2
    out.update({k: v for k, v in em.summary(targets, probs, task.classes, ordinal).items() if k not in out})
    out["reliability"] = em.reliability(targets, probs)
    if binary:
        out["at_threshold"] = em.at_threshold(targets, probs[:, 1], cfg.operating_point.threshold)
        chosen = _operating_point(val, cfg)
        if chosen is not None:
            out["operating_point"] = {"rule": cfg.operating_point.rule,
                                      "target": cfg.operating_point.sensitivity if cfg.operating_point.rule == "sensitivity" else None,
                                      "chosen_on": "val", **em.at_threshold(targets, probs[:, 1], chosen)}
    threshold = (out.get("operating_point") or out.get("at_threshold") or {}).get("threshold")

    def statistic(i: np.ndarray) -> dict:
        s = fast.scores(targets[i], probs[i], ordinal)
        values = {k: s[k] for k in HEADLINE}
        for key in ("at_threshold", "operating_point"):
            if key in out:
                values.update({f"{key}.{k}": v for k, v in fast.rates(targets[i], probs[i, 1],
                                                                        out[key]["threshold"]).items()})
        return values

    found = intervals(statistic, members, cfg.bootstrap.resamples, cfg.bootstrap.seed, cfg.bootstrap.level)
    out["intervals"] = {k: found[k] for k in HEADLINE if out.get(k) is not None}
    for key in ("at_threshold", "operating_point"):
        if key in out:
            out[key]["intervals"] = {k: found[f"{key}.{k}"] for k in RATES if out[key][k] is not None}
    out["bootstrap"] = {"resamples": cfg.bootstrap.resamples, "seed": cfg.bootstrap.seed, "level": cfg.bootstrap.level,
                        "unit": cfg.bootstrap.group if len(members) < len(targets) else "image", "groups": len(members)}
    if cfg.subgroups:
        out["subgroups"] = {c: _subgroups(c, task, targets, probs, rows, groups, cfg, threshold) for c in cfg.subgroups}
    return out


def _operating_point(val, cfg) -> float | None:
    if val is None or len(np.unique(val[0])) < 2:
        return None
    vt, vp = val[0], val[1][:, 1]
    if cfg.operating_point.rule == "youden":
        return em.youden_threshold(vt, vp)
    return em.sensitivity_threshold(vt, vp, cfg.operating_point.sensitivity)


def _subgroups(column: str, task: Task, targets, probs, rows, groups, cfg, threshold: float | None) -> dict:
    """Each value's metrics with intervals, or why there are none; the largest AUROC difference and
    the equalized-odds difference (the larger of the TPR and FPR ranges at the operating point)."""
    values = np.array([str(r.get(column, "")) for r in rows])
    binary = len(task.classes) == 2
    out, usable = {}, {}
    for v in sorted(set(values)):
        idx = np.flatnonzero(values == v)
        per_class = np.bincount(targets[idx], minlength=len(task.classes))
        name = v or "(empty)"
        if per_class.min() < cfg.min_cases:
            out[name] = {"n": int(len(idx)), "too_few": f"fewer than {cfg.min_cases} cases of a class "
                         f"({', '.join(f'{c} {n}' for c, n in zip(task.classes, per_class))})"}
            continue
        usable[name] = idx
        y, p = targets[idx], probs[idx]

        def statistic(i, y=y, p=p) -> dict:
            s = fast.scores(y[i], p[i], threshold=threshold if binary else None)
            return {k: s[k] for k in SUBGROUP if k in s}

        point = statistic(np.arange(len(idx)))
        point["auroc"] = em.summary(y, p, task.classes)["auroc"]  # scikit-learn's, as everywhere else
        members = group_index([groups[i] for i in idx] if groups else None, len(idx))
        out[name] = {"n": int(len(idx)), **point,
                     "intervals": intervals(statistic, members, cfg.bootstrap.resamples, cfg.bootstrap.seed, cfg.bootstrap.level)}
    gaps = {}
    if len(usable) >= 2:
        def spread(i: np.ndarray) -> dict:
            """Each subgroup scored on its share of the rows drawn (a resample repeats rows: isin keeps them)."""
            shares = [i[np.isin(i, idx)] for idx in usable.values()]
            if any(len(m) == 0 for m in shares):  # a subgroup left out of this resample: no gap to measure
                return {"auroc_difference": None, **({"equalized_odds_difference": None} if binary else {})}
            per = [fast.scores(targets[m], probs[m], threshold=threshold if binary else None) for m in shares]
            auroc = [s["auroc"] for s in per]
            gap = {"auroc_difference": None if None in auroc else max(auroc) - min(auroc)}
            if binary:
                tpr, fpr = [s["sensitivity"] for s in per], [None if s["specificity"] is None
                                                             else 1 - s["specificity"] for s in per]
                gap["equalized_odds_difference"] = (None if None in tpr or None in fpr else
                                                    max(max(tpr) - min(tpr), max(fpr) - min(fpr)))
            return gap

        point = spread(np.arange(len(targets)))
        found = intervals(spread, group_index(groups, len(targets)), cfg.bootstrap.resamples, cfg.bootstrap.seed, cfg.bootstrap.level)
        gaps = {k: {"value": v, "interval": found[k]} for k, v in point.items()}
    return {"values": out, "gaps": gaps, "threshold": threshold if binary else None}


def paired(task: Task, targets: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, rows: list[dict], cfg) -> dict:
    """A minus B for each headline metric on the same rows, with the paired bootstrap interval."""
    groups = [r.get(cfg.bootstrap.group, "") for r in rows] if cfg.bootstrap.group else None
    ordinal = task.kind == "ordinal"

    def stat(p):
        return lambda i: {k: fast.scores(targets[i], p[i], ordinal)[k] for k in HEADLINE}

    everything = np.arange(len(targets))
    a, b = stat(probs_a)(everything), stat(probs_b)(everything)
    found = paired_difference(stat(probs_a), stat(probs_b), group_index(groups, len(targets)), cfg.bootstrap.resamples,
                              cfg.bootstrap.seed, cfg.bootstrap.level)
    return {k: {"a": a[k], "b": b[k], "difference": None if a[k] is None or b[k] is None else a[k] - b[k],
                "interval": found[k]} for k in HEADLINE}
