"""evaluate: a fine-tuned model on a held-out split -> metrics.json and predictions.csv."""
from __future__ import annotations

from pathlib import Path

from medalign import config, engine
from medalign.data.datasets import write_skipped
from medalign.models import classifier
from medalign.predict import write_predictions
from medalign.stages import _common as common


def run(cfg: config.EvaluateConfig, out_dir: Path) -> dict:
    rt = engine.setup(cfg.runtime, seed=0)
    model, bb, task = classifier.load(cfg.model)
    manifest, rows, skipped = common.rows(cfg.data, cfg.data.split)
    # the intensity handling the model was trained with, never another
    intensity = config.Intensity(**bb.meta.get("intensity", {}))
    dataset = common.dataset(manifest, rows, cfg.data, intensity, common.eval_transform(bb, intensity), bb,
                             targets=task.targets(rows, manifest))
    loader = common.loader(dataset, cfg.data, cfg, rt, train=False)
    probs, targets = engine.predict(model.to(rt.device), loader, rt, task.probs)
    # skipped rows are not scored: the count says how much of the split the metrics cover
    metrics = {"split": cfg.data.split, "skipped_rows": len(skipped), **task.metrics(targets, probs)}
    if rt.is_main:
        write_skipped(out_dir, skipped)
        write_predictions(out_dir / "predictions.csv", rows, probs, task, with_label=True)
    return metrics
