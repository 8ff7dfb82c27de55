"""predict: a fine-tuned model's probabilities for every row of a manifest, labels not needed.

Rows come out in manifest order, one per image; unreadable ones follow `on_error` (fail, or skip
and list them in OUT.skipped.csv). Only the path and the predictions are written: other manifest
columns may hold identifying metadata.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import torch

from medalign import config, engine
from medalign.data.datasets import ImageDataset, load_rows, write_skipped
from medalign.models import classifier
from medalign.stages import _common as common
from medalign.tasks import Task


def predict(model_path: str | Path, manifest_path: str | Path, out_csv: Path, *, base: str | Path | None = None,
            tta: bool = False, batch_size: int = engine.INFERENCE_BATCH, on_error: str = "fail",
            device: str = "auto") -> dict:
    rt = engine.setup(config.Runtime(device=device), seed=0)
    model, bb, task = classifier.load(model_path, base)
    manifest, rows, skipped = load_rows(manifest_path, None, on_error)
    intensity = config.Intensity(**bb.meta.get("intensity", {}))
    dataset = ImageDataset(manifest, rows, common.eval_transform(bb, intensity), bb.in_chans,
                           reader=intensity.reader_args())
    loader = engine.loader(dataset, batch_size, rt, train=False)
    engine.place(model, rt).eval()
    probs = []
    for x, _ in loader:
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp):
            probs.append(classifier.probabilities(model, task, x.to(rt.device), tta).cpu())
    write_predictions(out_csv, rows, torch.cat(probs).numpy(), task)
    if skipped:
        write_skipped(out_csv.parent, skipped, name=f"{out_csv.stem}.skipped.csv")
    return {"rows": len(rows), "skipped_rows": len(skipped), "task": task.kind, "tta": tta}


def write_predictions(path: Path, rows: list[dict], probs: np.ndarray, task: Task, with_label: bool = False) -> None:
    """path, (label,) prediction and one probability column per class, written atomically."""
    predicted = task.predicted(probs)
    tmp = path.with_name(f".{path.name}.partial")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", *(["label"] if with_label else []), "prediction", *(f"p_{c}" for c in task.classes)])
        for row, p, k in zip(rows, probs, predicted):
            label = (task.separator.join(c for c, on in zip(task.classes, k) if on) if task.kind == "multilabel"
                     else task.classes[int(k)])
            w.writerow([row["path"], *([row.get("label", "")] if with_label else []), label, *(f"{v:.6f}" for v in p)])
    os.replace(tmp, path)
