"""evaluate: a fine-tuned model on a held-out split -> metrics.json and predictions.csv."""
from __future__ import annotations

import csv
from pathlib import Path

from medalign import config, engine
from medalign.data.datasets import ImageDataset, load_rows, write_skipped
from medalign.data.transforms import Single, eval_view
from medalign.errors import CheckpointError
from medalign.metrics.classification import classification_metrics
from medalign.models import backbones, checkpoint


def run(cfg: config.EvaluateConfig, out_dir: Path) -> dict:
    rt = engine.setup(cfg.runtime, seed=0)
    weights, meta = checkpoint.locate(cfg.model)
    if not meta or not meta.get("classes"):
        raise CheckpointError(f"{cfg.model} is not a fine-tuned classifier (no classes in its model.json)")
    classes, arch = meta["classes"], meta["architecture"]
    model = backbones.create(config.BackboneConfig(name=arch["name"], kwargs=arch["kwargs"],
                                                   in_chans=arch["in_chans"], img_size=meta["img_size"]),
                             num_classes=len(classes))
    state = checkpoint.load_state_dict(weights)
    checkpoint.check_fit(model, state, weights)  # strict: a classifier without its head is no classifier
    model.load_state_dict(state)
    model.to(rt.device)

    manifest, rows, skipped = load_rows(cfg.data.manifest, cfg.data.split, cfg.data.on_error)
    # the intensity handling the model was trained with, never another
    intensity = config.Intensity(**meta.get("intensity", {}))
    view = Single(eval_view(meta["img_size"], **meta["normalization"], zscore=intensity.zscore))
    dataset = ImageDataset(manifest, rows, view, arch["in_chans"], classes, intensity.reader_args(),
                           cache_size=meta["img_size"] if cfg.data.cache else None)
    probs, targets = engine.predict(model, engine.loader(dataset, cfg.data.batch_size, rt, train=False,
                                                         num_workers=cfg.runtime.num_workers), rt)
    # skipped rows are not scored: the count says how much of the split the metrics cover
    metrics = {"split": cfg.data.split, "skipped_rows": write_skipped(out_dir, skipped),
               **classification_metrics(targets, probs, classes)}
    if rt.is_main:
        _write_predictions(out_dir / "predictions.csv", rows, probs, classes)
    return metrics


def _write_predictions(path: Path, rows: list[dict], probs, classes: list[str]) -> None:
    # only path, label and predictions: other manifest columns may hold identifying metadata
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "prediction", *(f"p_{c}" for c in classes)])
        for row, p in zip(rows, probs):
            w.writerow([row["path"], row.get("label", ""), classes[int(p.argmax())], *(f"{v:.6f}" for v in p)])
