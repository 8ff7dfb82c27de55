"""evaluate: a fine-tuned model on a held-out split -> metrics.json (intervals, operating point,
subgroups, calibration), predictions.csv and report.html."""
from __future__ import annotations

from pathlib import Path

from medalign import config, engine, evaluation
from medalign.data.datasets import write_skipped
from medalign.data.manifest import Manifest
from medalign.models import classifier
from medalign.predict import write_predictions
from medalign.stages import _common as common


def run(cfg: config.EvaluateConfig, out_dir: Path) -> dict:
    rt = engine.setup(cfg.runtime, seed=0)
    model, bb, task = classifier.load(cfg.model)
    engine.place(model, rt)
    manifest, rows, skipped = common.rows(cfg.data, cfg.data.split)
    missing = [c for c in cfg.subgroups if c not in manifest.columns]
    if missing:
        raise config.ConfigError(f"subgroups: manifest {manifest.path} has no column {', '.join(missing)}")
    probs, targets = _predict(cfg, rt, model, bb, task, manifest, rows)
    val = None
    if cfg.data.val_split and cfg.data.val_split != cfg.data.split and len(task.classes) == 2 \
            and task.kind != "multilabel" and any(r.get("split") == cfg.data.val_split for r in manifest.rows):
        _, val_rows, _ = common.rows(cfg.data, cfg.data.val_split)
        vp, vt = _predict(cfg, rt, model, bb, task, manifest, val_rows)
        val = (vt, vp)
    # skipped rows are not scored: the count says how much of the split the metrics cover
    metrics = {"split": cfg.data.split, "skipped_rows": len(skipped), "task": task.kind, "classes": task.classes,
               **evaluation.evaluate(task, targets, probs, rows, cfg, val=val)}
    if rt.is_main:
        write_skipped(out_dir, skipped)
        write_predictions(out_dir / "predictions.csv", rows, probs, task, with_label=True)
        if cfg.report.enabled:
            from medalign.report import build
            metrics["report"] = build.evaluation_report(out_dir, metrics, cfg, model, bb, task, manifest, rows).name
    return metrics


def _predict(cfg, rt, model, bb, task, manifest: Manifest, rows: list[dict]):
    # the intensity handling the model was trained with, never another
    intensity = config.Intensity(**bb.meta.get("intensity", {}))
    dataset = common.dataset(manifest, rows, cfg.data, intensity, common.eval_transform(bb, intensity), bb,
                             targets=task.targets(rows, manifest))
    return engine.predict(model, common.loader(dataset, cfg.data, cfg, rt, train=False), rt, task.probs)
