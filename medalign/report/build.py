"""Gathers what a report shows: explanation maps for a few correct and wrong cases of each class,
and the model card (from the model's model.json and its training run's config and metrics)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml

from medalign import config
from medalign.data.manifest import Manifest
from medalign.report import page
from medalign.report.explain import explain
from medalign.stages import _common as common


def evaluation_report(out_dir: Path, metrics: dict, cfg: config.EvaluateConfig, model, bb, task, manifest: Manifest,
                      rows: list[dict], out: Path | None = None) -> Path:
    """out_dir's report.html (or `out`), from its predictions.csv and metrics."""
    targets, probs = page._predictions(out_dir / "predictions.csv", task.classes)
    cells = []
    if cfg.report.cases and task.kind != "multilabel" and targets is not None:
        cells = _explanations(model, bb, task, manifest, rows, targets, probs, cfg)
    return page.evaluation_page(out_dir, metrics, yaml.safe_load(config.dump(cfg)), out, explanations=cells,
                                thumbnails=cfg.report.thumbnails, card=card(cfg, bb, metrics, manifest))


def _explanations(model, bb, task, manifest, rows, targets, probs, cfg: config.EvaluateConfig) -> list[dict]:
    """Per class, the most confident correct cases and the most confident wrong ones."""
    report = cfg.report
    preds = probs.argmax(1)
    chosen = []
    for c, name in enumerate(task.classes):
        for correct in (True, False):
            idx = np.flatnonzero((targets == c) & ((preds == c) == correct))
            idx = idx[np.argsort(-probs[idx, preds[idx]])][:report.cases]
            chosen += [(int(i), f"{name}: {'right' if correct else f'called {task.classes[preds[i]]}'}, "
                                f"p {probs[i, preds[i]]:.2f}") for i in idx]
    if not chosen:
        return []
    intensity = config.Intensity(**bb.meta.get("intensity", {}))
    ds = common.dataset(manifest, [rows[i] for i, _ in chosen], cfg.data, intensity,
                        common.eval_transform(bb, intensity), bb)
    x = torch.stack([ds[k][0] for k in range(len(ds))]).float()
    model = model.cpu().eval()
    maps, method = explain(model, x, [int(preds[i]) for i, _ in chosen])
    return [{"map": m, "image": (x[k].mean(0).numpy() if report.thumbnails else None), "title": title,
             "method": method} for k, (m, (_, title)) in enumerate(zip(maps, chosen))]


def card(cfg: config.EvaluateConfig, bb, metrics: dict, manifest: Manifest) -> dict:
    """The model card's fields; what medalign cannot know (intended use, label source) comes from
    the report config."""
    meta = bb.meta or {}
    run = _training_run(Path(cfg.model))
    trained = json.loads((run / "metrics.json").read_text()) if run and (run / "metrics.json").is_file() else {}
    limitations = [f"Evaluated on {metrics['n']} {metrics['split']} images of one manifest: performance on "
                   "other sites, scanners and populations is not measured here."]
    if trained.get("train_images"):
        limitations.append(f"Trained on {trained['train_images']} labeled images.")
    for column, s in (metrics.get("subgroups") or {}).items():
        few = [v for v, m in s["values"].items() if "too_few" in m]
        if few:
            limitations.append(f"{column}: too few cases to score {', '.join(few)}.")
    if (metrics.get("ece") or 0) > 0.05:
        limitations.append(f"Probabilities are miscalibrated (ECE {metrics['ece']:.3f}): do not read them as risks.")
    return {"intended_use": cfg.report.intended_use, "label_source": cfg.report.label_source or "not stated",
            "training_data": (f"manifest fingerprint {meta.get('data_fingerprint', '?')[:16]}, "
                              f"{trained.get('train_images', '?')} labeled training images"),
            "starting_point": meta.get("starting_point"), "architecture": meta.get("architecture", {}).get("name"),
            "adapter": (meta.get("adapter") or {}).get("name"),
            "training_config": (run / "config.yaml").read_text() if run and (run / "config.yaml").is_file() else "",
            "versions": meta.get("versions", {}), "limitations": [*limitations, *cfg.report.limitations],
            "data": {"counts": page.counts_by_split(manifest.rows), "fingerprint": meta.get("data_fingerprint")}}


def _training_run(model: Path) -> Path | None:
    for folder in (model, model.parent):
        if (folder / "config.yaml").is_file() and (folder / "model").is_dir():
            return folder
    return None


def rebuild(runs: list[Path], out: Path | None = None) -> Path:
    """One evaluate output: its report again (out: another place). Several: a comparison page."""
    from medalign import evaluation as ev
    from medalign.errors import MedalignError
    from medalign.models import classifier

    cfgs = []
    for run in runs:
        if not (run / "metrics.json").is_file() or not (run / "predictions.csv").is_file():
            raise MedalignError(f"{run} is not an evaluate output (no metrics.json and predictions.csv)")
        cfgs.append(config.load(config.EvaluateConfig, run / "config.yaml", []))
    if len(runs) == 1:
        run, cfg = runs[0], cfgs[0]
        model, bb, task = classifier.load(cfg.model)
        manifest, rows, _ = common.rows(cfg.data, cfg.data.split)
        return evaluation_report(run, json.loads((run / "metrics.json").read_text()), cfg, model, bb, task,
                                 manifest, rows, out)
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    classes = metrics[0]["classes"]
    if any(m["classes"] != classes for m in metrics):
        raise MedalignError("report: the runs score different classes; compare runs of one task")
    from medalign.tasks import Task
    task = Task(metrics[0]["task"], classes)
    manifest, rows, _ = common.rows(cfgs[0].data, cfgs[0].data.split)
    by_path = {r["path"]: r for r in rows}
    scored = [_scores_by_path(r / "predictions.csv", classes) for r in runs]
    shared = [p for p in scored[0] if all(p in s for s in scored[1:]) and p in by_path]
    targets = np.array([classes.index(scored[0][p][0]) for p in shared])
    paired_rows = []
    for run, s in zip(runs[1:], scored[1:]):
        d = ev.paired(task, targets, np.array([s[p][1] for p in shared]),
                              np.array([scored[0][p][1] for p in shared]), [by_path[p] for p in shared], cfgs[0])
        paired_rows += [{"a": _name(run), "b": _name(runs[0]), "metric": k, "value": v["difference"],
                         "interval": v["interval"]} for k, v in d.items() if k in ("auroc", "accuracy")
                        and v["difference"] is not None]
    return page.comparison_page(runs, out or Path("comparison.html"), {"rows": paired_rows})


def _scores_by_path(path: Path, classes: list[str]) -> dict[str, tuple[str, list[float]]]:
    import csv
    with path.open(newline="") as f:
        return {r["path"]: (r["label"], [float(r[f"p_{c}"]) for c in classes]) for r in csv.DictReader(f)}


def _name(run: Path) -> str:
    return f"{run.parent.name}/{run.name}"
