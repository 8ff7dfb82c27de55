"""gap and drift: how far apart two manifests' images are, as a backbone sees them.

`gap` compares two sets (a pretraining pool and a target, one site and another) under any
backbone, so a user can watch the distance shrink after continued pretraining. `drift` compares a
deployed model's reference images with new ones under that model's own backbone, adds the shift in
predicted-class frequencies, and decides: drift when the MMD permutation test rejects at `alpha`.
Both use the pooled features a linear probe would see, scaled to unit length, Fréchet distance and
kernel MMD (`metrics/shift.py`); at most `max_images` per side, a seeded sample, since MMD's kernel
matrix grows with the square of the rows.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medalign import config, engine
from medalign.data.datasets import ImageDataset, load_rows
from medalign.errors import DataError
from medalign.metrics.shift import frechet_distance, mmd
from medalign.models import backbones, classifier
from medalign.models.backbones import Backbone
from medalign.stages import _common as common


def gap(a: str | Path, b: str | Path, backbone: config.BackboneConfig, *, splits: list[str] | None = None,
        permutations: int = 500, max_images: int = 1000, seed: int = 0, batch_size: int = engine.INFERENCE_BATCH,
        device: str = "auto") -> dict:
    rt = engine.setup(config.Runtime(device=device), seed=seed)
    bb = backbones.resolve(backbone)
    model = bb.create(num_classes=0)
    fa, _ = _features(a, splits, bb, model, max_images, seed, batch_size, rt)
    fb, _ = _features(b, splits, bb, model, max_images, seed + 1, batch_size, rt)
    return {"a": str(a), "b": str(b), "backbone": bb.name, "images": [len(fa), len(fb)],
            **_distances(fa, fb, permutations, seed)}


def drift(reference: str | Path, new: str | Path, model_path: str | Path, *, alpha: float = 0.01,
          permutations: int = 500, max_images: int = 1000, seed: int = 0, batch_size: int = engine.INFERENCE_BATCH,
          base: str | Path | None = None, device: str = "auto") -> dict:
    from scipy.stats import chi2_contingency

    rt = engine.setup(config.Runtime(device=device), seed=seed)
    model, bb, task = classifier.load(model_path, base)
    fa, pa = _features(reference, None, bb, model, max_images, seed, batch_size, rt, task)
    fb, pb = _features(new, None, bb, model, max_images, seed + 1, batch_size, rt, task)
    if pa.ndim == 2:  # multi-label: each class's positive rate; no single contingency table
        freq, chi2 = np.stack([pa.mean(0), pb.mean(0)]), None
    else:
        counts = np.array([np.bincount(p, minlength=len(task.classes)) for p in (pa, pb)])
        freq = counts / counts.sum(1, keepdims=True)
        seen = counts.sum(0) > 0  # a class neither set predicts adds nothing to the test
        chi2 = chi2_contingency(counts[:, seen]) if seen.sum() > 1 else None
    distances = _distances(fa, fb, permutations, seed)
    return {"reference": str(reference), "new": str(new), "model": str(model_path), "images": [len(fa), len(fb)],
            **distances, "alpha": alpha, "drift": bool(distances["mmd_p_value"] < alpha),
            "predicted_frequencies": {"classes": task.classes, "reference": freq[0].tolist(), "new": freq[1].tolist(),
                                      "total_variation": float(np.abs(freq[0] - freq[1]).sum() / 2),
                                      "chi2_p_value": float(chi2.pvalue) if chi2 else None}}


def _distances(fa: np.ndarray, fb: np.ndarray, permutations: int, seed: int) -> dict:
    m = mmd(fa, fb, permutations=permutations, seed=seed)
    return {"frechet": frechet_distance(fa, fb), "mmd2": m["mmd2"], "mmd_p_value": m["p_value"],
            "mmd_bandwidth": m["bandwidth"], "permutations": permutations}


@torch.no_grad()
def _features(manifest: str | Path, splits: list[str] | None, bb: Backbone, model: torch.nn.Module, max_images: int,
              seed: int, batch_size: int, rt: engine.Runtime, task=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Pooled features of (a seeded sample of) the manifest's rows; with `task`, also predicted classes."""
    m, rows, _ = load_rows(manifest, splits, "fail")
    if len(rows) < 2:
        raise DataError(f"{manifest}: {len(rows)} row(s){f' in {splits}' if splits else ''}; a distance needs "
                        "at least 2 images per side")
    if len(rows) > max_images:
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), max_images, replace=False))
        rows = [rows[i] for i in keep]
    intensity = config.Intensity(**(bb.meta or {}).get("intensity", {}))
    ds = ImageDataset(m, rows, common.eval_transform(bb, intensity), bb.in_chans, reader=intensity.reader_args())
    loader = engine.loader(ds, batch_size, rt, train=False)
    net = engine.place(model, rt).eval()
    timm_model = next(x for x in net.modules() if hasattr(x, "forward_head"))
    feats, preds = [], []
    for x, _ in loader:
        # peft and APLA adapt the timm model's modules in place: its own forward runs them
        f = timm_model.forward_features(x.to(rt.device))
        feats.append(timm_model.forward_head(f, pre_logits=True).float().cpu())
        if task is not None:
            preds.append(task.predicted(task.probs(timm_model.forward_head(f)).float().cpu().numpy()))
    # unit length: a backbone's feature scale is arbitrary, and gap must compare one before and after
    # continued pretraining on one scale (Fréchet distance then lies in [0, 4])
    feats = torch.nn.functional.normalize(torch.cat(feats), dim=1)
    return feats.numpy(), (np.concatenate(preds) if task is not None else None)
