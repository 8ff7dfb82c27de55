"""estimate: rank candidate starting points by transferability scores of their frozen features.

No training: each candidate's pooled features (what a linear probe would see) are computed once
over the train and eval rows, then every requested score of medalign.metrics.transferability.
"""
from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn

from medalign import engine
from medalign.config.stages import Candidate, EstimateConfig
from medalign.data.datasets import class_names, write_skipped
from medalign.data.manifest import Manifest, check_no_leak
from medalign.errors import MedalignError, one_line
from medalign.metrics import transferability as tm
from medalign.models import backbones, checkpoint
from medalign.models.backbones import Backbone, head_names
from medalign.stages import _common as common

TABLE = "estimate.csv"
NO_SOURCE = "leep/nce skipped: no source classifier"


def run(cfg: EstimateConfig, out_dir: Path) -> dict:
    rt = engine.setup(cfg.runtime, cfg.seed)
    manifest, train_rows, skipped = common.rows(cfg.data, cfg.data.train_split, cfg.data.subset)
    _, eval_rows, skipped_eval = common.rows(cfg.data, cfg.data.eval_split)
    check_no_leak(manifest)
    classes = class_names(manifest, train_rows)
    table = [_candidate(c, cfg, manifest, train_rows, eval_rows, classes, rt) for c in cfg.candidates]
    rank_by = "knn_auroc" if "knn" in cfg.scores else _columns(cfg.scores)[0]
    # an undefined score (None) ranks last
    table.sort(key=lambda r: (r[rank_by] is None, -(r[rank_by] or 0.0)))
    n_skipped = len(skipped) + len(skipped_eval)
    if rt.is_main:
        _write_table(out_dir / TABLE, table, ["name", *_columns(cfg.scores), "feature_seconds", "score_seconds",
                                              "note"])
        n_skipped = write_skipped(out_dir, skipped + skipped_eval)
    return {"classes": classes, "train_images": len(train_rows), "eval_images": len(eval_rows),
            "skipped_rows": n_skipped, "ranked_by": rank_by, "candidates": table,
            "ranking": [r["name"] for r in table], "table": TABLE}


def _candidate(cand: Candidate, cfg: EstimateConfig, manifest: Manifest, train_rows: list[dict],
               eval_rows: list[dict], classes: list[str], rt: engine.Runtime) -> dict:
    start = time.perf_counter()
    try:
        bb = backbones.resolve(cand.backbone)
        model = bb.create(num_classes=0)
        source = _source_classifier(bb, model)
    except MedalignError as e:
        raise type(e)(f"candidate {cand.name}: {one_line(e)}") from None
    evaluation = common.eval_transform(bb, cfg.data.intensity)

    def features(rows: list[dict]):
        ds = common.dataset(manifest, rows, cfg.data, cfg.data.intensity, evaluation, bb, classes)
        return _features(model, source, common.loader(ds, cfg.data, cfg, rt, train=False), rt)

    (train_f, train_p, train_y), (eval_f, _, eval_y) = features(train_rows), features(eval_rows)
    row = {"name": cand.name, "feature_seconds": time.perf_counter() - start,
           "note": NO_SOURCE if source is None and {"leep", "nce"} & set(cfg.scores) else ""}
    start = time.perf_counter()
    for score in cfg.scores:
        row.update(_score(score, cfg, train_f, train_p, train_y, eval_f, eval_y))
    row["score_seconds"] = time.perf_counter() - start
    return row


def _source_classifier(bb: Backbone, features: nn.Module) -> nn.Module | None:
    """The candidate with the classifier its weights were trained with, for LEEP and NCE: timm's
    hub head, or the head a local weights file carries (a named ImageNet start, a fine-tuned
    model). Random init and headless checkpoints (pretrain outputs) have none."""
    if bb.pretrained:
        pcfg = timm.models.get_pretrained_cfg(bb.name)
        return bb.create(num_classes=pcfg.num_classes) if pcfg and pcfg.num_classes else None
    if bb.weights is None:
        return None
    weight = checkpoint.load_state_dict(bb.weights).get(f"{head_names(features)[0]}.weight")
    return bb.create(num_classes=weight.shape[0]) if weight is not None and weight.ndim == 2 else None


@torch.no_grad()
def _features(model: nn.Module, source: nn.Module | None, data, rt: engine.Runtime):
    """Pooled features, source-classifier probabilities (None without one) and targets, as float64."""
    models = [engine.place(m, rt).eval() for m in (model, source) if m is not None]
    fs, ps, ys = [], [], []
    for x, y in data:
        x = x.to(rt.device)
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp):
            fs.append(model.forward_head(model.forward_features(x), pre_logits=True).float().cpu())
            if source is not None:
                ps.append(source(x).float().softmax(-1).cpu())
        ys.append(y)
    for m in models:
        m.cpu()  # the next candidate gets the accelerator's memory
    probs = torch.cat(ps).double().numpy() if ps else None
    return torch.cat(fs).double().numpy(), probs, torch.cat(ys).numpy()


def _score(score: str, cfg: EstimateConfig, train_f: np.ndarray, train_p: np.ndarray | None,
           train_y: np.ndarray, eval_f: np.ndarray, eval_y: np.ndarray) -> dict:
    """One requested score as table columns; k-NN and the probe are measured on the eval rows, the
    others on the train rows they are fitted to."""
    if score == "knn":
        m = tm.knn(train_f, train_y, eval_f, eval_y, cfg.knn.k, cfg.knn.temperature)
        return {"knn_auroc": m["auroc"], "knn_accuracy": m["accuracy"]}
    if score == "linear":
        return {"linear_auroc": tm.linear_probe(train_f, train_y, eval_f, eval_y, seed=cfg.seed)["auroc"]}
    if score == "leep":
        return {"leep": None if train_p is None else tm.leep(train_p, train_y)}
    if score == "nce":
        return {"nce": None if train_p is None else tm.nce(train_p.argmax(1), train_y)}
    if score == "nleep":
        return {"nleep": tm.nleep(train_f, train_y, seed=cfg.seed)}
    return {score: {"logme": tm.logme, "hscore": tm.hscore, "gbc": tm.gbc}[score](train_f, train_y)}


def _columns(scores: list[str]) -> list[str]:
    columns = {"knn": ["knn_auroc", "knn_accuracy"], "linear": ["linear_auroc"]}
    return [c for s in scores for c in columns.get(s, [s])]


def _write_table(path: Path, table: list[dict], columns: list[str]) -> None:
    """Temp file then rename: a reader never sees half a table."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows({k: "" if v is None else v for k, v in r.items()} for r in table)
    os.replace(tmp, path)
