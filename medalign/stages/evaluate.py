"""evaluate: a fine-tuned model on a held-out split -> metrics.json and predictions.csv."""
from __future__ import annotations

import csv
from pathlib import Path

from medalign import config, engine
from medalign.data.datasets import write_skipped
from medalign.metrics.classification import classification_metrics
from medalign.models import backbones
from medalign.stages import _common as common


def run(cfg: config.EvaluateConfig, out_dir: Path) -> dict:
    rt = engine.setup(cfg.runtime, seed=0)
    model, bb = backbones.load_classifier(cfg.model)
    classes = bb.meta["classes"]
    manifest, rows, skipped = common.rows(cfg.data, cfg.data.split)
    # the intensity handling the model was trained with, never another
    intensity = config.Intensity(**bb.meta.get("intensity", {}))
    dataset = common.dataset(manifest, rows, cfg.data, intensity, common.eval_transform(bb, intensity), bb, classes)
    probs, targets = engine.predict(model.to(rt.device), common.loader(dataset, cfg.data, cfg, rt, train=False), rt)
    # skipped rows are not scored: the count says how much of the split the metrics cover
    metrics = {"split": cfg.data.split, "skipped_rows": len(skipped),
               **classification_metrics(targets, probs, classes)}
    if rt.is_main:
        write_skipped(out_dir, skipped)
        _write_predictions(out_dir / "predictions.csv", rows, probs, classes)
    return metrics


def _write_predictions(path: Path, rows: list[dict], probs, classes: list[str]) -> None:
    # only path, label and predictions: other manifest columns may hold identifying metadata
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "prediction", *(f"p_{c}" for c in classes)])
        for row, p in zip(rows, probs):
            w.writerow([row["path"], row.get("label", ""), classes[int(p.argmax())], *(f"{v:.6f}" for v in p)])
