"""Does continued pretraining shrink the gap between two scanners? `medalign gap` before and after.

    .venv/bin/pip install -e '.[weights]'
    .venv/bin/python benchmarks/domain_gap.py [--epochs 5]

On the demo data's unlabeled pool (two synthetic scanners: scanner_b has lower contrast, more
noise and more blur), measures the Fréchet distance and kernel MMD between scanner_a's and
scanner_b's images under each starting point (ImageNet EfficientNet-Lite0; a ResNet-18 from random
init) and under the same start after SimCLR on the pool (`medalign run`, cached in the work folder).
Writes the section "## Domain gap" of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

from medalign.data import build
from results import machine, update_section

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Domain gap before and after continued pretraining (`benchmarks/domain_gap.py`)"
STARTS = {  # label: (backbone config, pretraining overrides of configs/pretrain/simclr_resnet18.yaml)
    "ImageNet EfficientNet-Lite0": ({"weights": "imagenet-efficientnet-lite0", "in_chans": 1}, {"optim": {"lr": 5e-4}}),
    "ResNet-18, random init": ({"name": "resnet18", "in_chans": 1}, {}),
}


def medalign(*args) -> str:
    r = subprocess.run([sys.executable, "-m", "medalign", *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"failed: medalign {' '.join(map(str, args))}\n{r.stderr[-3000:]}")
    return r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5, help="SimCLR epochs on the pool")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "domain_gap")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    steps = {"data": {"stage": "demo-data", "config": {"n_unlabeled": 600, "n_train": 120, "n_val": 60,
                                                       "n_test": 200, "img_size": 64, "seed": 0}}}
    for i, (backbone, overrides) in enumerate(STARTS.values()):
        cfg = {"backbone": {**backbone, "img_size": 64}, "data": {"manifest": "${data}/manifest.csv",
                                                                  "splits": ["unlabeled"]},
               "optim": {"epochs": args.epochs, **overrides.get("optim", {})}}
        steps[f"pretrain-{i}"] = {"stage": "pretrain", "base": str(ROOT / "configs/pretrain/simclr_resnet18.yaml"),
                                  "config": cfg}
    pipeline = args.work / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({"workdir": str(args.work / "runs"), "steps": steps}, sort_keys=False))
    began = time.perf_counter()
    printed = medalign("run", pipeline)
    outs = dict(re.findall(r"^\[([\w-]+)\] (?:done|cached) +(\S+)$", printed, re.M))
    pool = Path(outs["data"]) / "manifest.csv"
    sites = {s: build.select(pool, args.work / f"{s}.csv", "site", s) for s in ("scanner_a", "scanner_b")}

    rows = []
    for i, (label, (backbone, _)) in enumerate(STARTS.items()):
        for when, spec in (("before", backbone.get("weights") or backbone["name"]), ("after", outs[f"pretrain-{i}"])):
            out = args.work / f"gap-{i}-{when}.json"
            medalign("gap", sites["scanner_a"], sites["scanner_b"], "--backbone", spec, "--img-size", 64,
                     "--split", "unlabeled", "--permutations", 500, "--device", "cpu", "--json", out)
            rows.append((label, when, json.loads(out.read_text())))
    minutes = (time.perf_counter() - began) / 60

    n = rows[0][2]["images"]
    lines = [HEADING, "",
             f"Machine: {machine()}; "
             f"{time.strftime('%Y-%m-%d')}. `python benchmarks/domain_gap.py --epochs {args.epochs}`: "
             f"{minutes:.0f} minutes. The demo data's unlabeled pool at 64 px, scanner_a ({n[0]} images) against "
             f"scanner_b ({n[1]}); features pooled and scaled to unit length; after: SimCLR on the whole pool "
             f"(both scanners, {args.epochs} epochs).", "",
             "| start | when | Fréchet | MMD² | MMD p (500 permutations) |", "|---|---|---|---|---|"]
    for label, when, r in rows:
        lines.append(f"| {label} | {when} | {r['frechet']:.4f} | {r['mmd2']:.4f} | {r['mmd_p_value']:.3f} |")
    lines.append("")
    for i, label in enumerate(STARTS):
        before, after = rows[2 * i][2], rows[2 * i + 1][2]
        lines.append(f"- {label}: Fréchet {before['frechet']:.4f} -> {after['frechet']:.4f} "
                     f"({'smaller' if after['frechet'] < before['frechet'] else 'not smaller'}), MMD² "
                     f"{before['mmd2']:.4f} -> {after['mmd2']:.4f} "
                     f"({'smaller' if after['mmd2'] < before['mmd2'] else 'not smaller'}).")
    section = "\n".join(lines) + "\n"
    print(section)
    update_section(HEADING, section)


if __name__ == "__main__":
    main()
