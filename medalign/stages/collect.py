"""collect: several evaluate outputs (a sweep's seeds, a cross-validation's folds) -> one summary.

metrics.json holds each headline metric per run, their mean and spread, and, when no image was
scored twice (the folds of a cross-validation), the metrics of all runs' predictions pooled: the
out-of-fold estimate. report.html compares the runs side by side.
"""
from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import numpy as np

from medalign import config
from medalign.errors import MedalignError
from medalign.metrics.evaluation import summary
from medalign.report import page

HEADLINE = ("auroc", "auprc", "accuracy", "balanced_accuracy", "f1_macro", "kappa", "ece", "brier")


def run(cfg: config.CollectConfig, out_dir: Path) -> dict:
    runs = [Path(r) for r in cfg.runs]
    metrics = []
    for r in runs:
        if not (r / "metrics.json").is_file():
            raise MedalignError(f"collect: {r} has no metrics.json (runs: evaluate outputs)")
        metrics.append(json.loads((r / "metrics.json").read_text()))
    classes = metrics[0].get("classes")
    if any(m.get("classes") != classes for m in metrics):
        raise MedalignError("collect: the runs score different classes; collect runs of one task")
    names = [k for k in HEADLINE if all(isinstance(m.get(k), (int, float)) for m in metrics)]
    per_run = {k: [m[k] for m in metrics] for k in names}
    out = {"runs": [str(r) for r in runs], "n": [m.get("n") for m in metrics], "per_run": per_run,
           "mean": {k: statistics.mean(v) for k, v in per_run.items()},
           "std": {k: statistics.pstdev(v) for k, v in per_run.items()}, **_pooled(runs, metrics[0])}
    out["report"] = page.comparison_page(runs, out_dir / "report.html").name
    return out


def _pooled(runs: list[Path], first: dict) -> dict:
    """The runs' predictions as one set, when they score disjoint images (folds), else why not."""
    if first.get("task") == "multilabel":
        return {"pooled": None, "pooled_why_not": "multi-label runs are not pooled"}
    if not all((r / "predictions.csv").is_file() for r in runs):
        return {"pooled": None, "pooled_why_not": "a run has no predictions.csv"}
    rows = []
    for r in runs:
        with (r / "predictions.csv").open(newline="") as f:
            rows += list(csv.DictReader(f))
    paths = [r["path"] for r in rows]
    if len(set(paths)) < len(paths):
        return {"pooled": None, "pooled_why_not": "the runs score some images more than once (seeds on one "
                                                  "test set, not folds): their mean is the summary"}
    classes = first["classes"]
    targets = np.array([classes.index(r["label"]) for r in rows])
    probs = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    return {"pooled": {"n": len(rows), **summary(targets, probs, classes, ordinal=first.get("task") == "ordinal")}}
