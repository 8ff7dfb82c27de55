"""Pretraining throughput: `medalign pretrain` against a minimal hand-written loop, same work.

    .venv/bin/python benchmarks/ssl_throughput.py [--repeats 3] [--epochs 2]

The minimal loop is the ceiling: the same timm model, lightly loss and head, albumentations views,
batch, DataLoader and threads, and nothing else (no logging, resume checks, progress bar).
Both time each optimizer step from the end of one to the end of the next, data loading included,
and skip the first 3 steps (allocator and thread-pool warm-up). Runs are interleaved
(medalign, loop, medalign, loop, ...) so that a busy machine slows both alike; the table reports
the median images/s over all timed steps of all repeats and the spread of the per-run medians.
Writes the section "## Pretraining throughput" of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import update_section

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Pretraining throughput (`benchmarks/ssl_throughput.py`)"
SKIP = 3
CASES = {
    "SimCLR, resnet18, 3 channels, 64 px, batch 64": [
        "backbone.name=resnet18", "backbone.in_chans=3", "backbone.img_size=64", "method.name=simclr",
        "method.temperature=0.2", "data.batch_size=64"],
    "DINO, vit_tiny (patch 8, 6 blocks), 1 channel, 64 px + 2 local crops, batch 64": [
        "backbone.name=vit_tiny_patch16_224", "backbone.kwargs={patch_size: 8, depth: 6}", "backbone.in_chans=1",
        "backbone.img_size=64", "method.name=dino", "method.out_dim=1024", "method.n_local_crops=2",
        "data.batch_size=64"],
}

# The loop the ceiling is measured with: everything `medalign pretrain` computes per step, nothing more.
MINIMAL = r'''
import json, sys, time
import torch
from medalign import config, ssl
from medalign.models import backbones
from medalign.data.datasets import ImageDataset, load_rows

cfg = config.load(config.PretrainConfig, None, json.loads(sys.argv[1]))
bb = backbones.resolve(cfg.backbone)
objective, views = ssl.build(cfg.method, cfg, bb)
manifest, rows, _ = load_rows(cfg.data.manifest, cfg.data.splits)
data = torch.utils.data.DataLoader(ImageDataset(manifest, rows, views.reseed(0), bb.in_chans),
                                   batch_size=cfg.data.batch_size, shuffle=True, drop_last=True)
opt = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=cfg.optim.lr)
objective.train()
rates, tick = [], time.perf_counter()
for epoch in range(cfg.optim.epochs):
    for batch in data:
        loss = objective(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if hasattr(objective, "after_optimizer_step"):
            objective.after_optimizer_step(0, 1)
        now = time.perf_counter()
        rates.append(cfg.data.batch_size / (now - tick))
        tick = now
print(json.dumps(rates))
'''


def medalign_rates(manifest: Path, args: list[str], epochs: int, out: Path) -> list[float]:
    cmd = [sys.executable, "-m", "medalign", "pretrain", f"data.manifest={manifest}", f"optim.epochs={epochs}",
           "runtime.device=cpu", "runtime.checkpoint_every_minutes=0", *args, "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    steps = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"summary"' not in x]
    return [s["img_per_s"] for s in steps]


def minimal_rates(manifest: Path, args: list[str], epochs: int) -> list[float]:
    overrides = [f"data.manifest={manifest}", f"optim.epochs={epochs}", *args]
    r = subprocess.run([sys.executable, "-c", MINIMAL, json.dumps(overrides)], capture_output=True, text=True,
                       cwd=ROOT)
    if r.returncode:
        sys.exit(f"minimal loop failed\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medalign-throughput-"))
    subprocess.run([sys.executable, "-m", "medalign", "demo-data", str(work / "demo")], check=True,
                   capture_output=True, cwd=ROOT)
    manifest = work / "demo" / "manifest.csv"

    import torch
    rows = []
    for case, case_args in CASES.items():
        runs = {"medalign": [], "loop": []}
        for i in range(args.repeats):
            runs["medalign"].append(medalign_rates(manifest, case_args, args.epochs, work / f"run{len(rows)}{i}")[SKIP:])
            runs["loop"].append(minimal_rates(manifest, case_args, args.epochs)[SKIP:])
        med = {k: statistics.median([r for run in v for r in run]) for k, v in runs.items()}
        per_run = {k: [statistics.median(run) for run in v] for k, v in runs.items()}
        ratios = [m / loop for m, loop in zip(per_run["medalign"], per_run["loop"])]
        rows.append(f"| {case} | {med['medalign']:.1f} ({min(per_run['medalign']):.1f}-{max(per_run['medalign']):.1f}) | "
                    f"{med['loop']:.1f} ({min(per_run['loop']):.1f}-{max(per_run['loop']):.1f}) | "
                    f"{med['medalign'] / med['loop']:.2f}x ({', '.join(f'{r:.2f}' for r in ratios)}) |")
        print(rows[-1], flush=True)

    section = "\n".join([
        HEADING, "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, no DataLoader workers; {time.strftime('%Y-%m-%d')}. The 720 demo "
        f"images, {args.epochs} epochs per run, {args.repeats} interleaved repeats, first {SKIP} steps of each run "
        "skipped. Images/s: median over every timed step (range of the per-run medians).", "",
        "| case | medalign pretrain | minimal loop | medalign / loop (per repeat) |", "|---|---|---|---|",
        *rows, "",
        "Target: >= 0.95x the minimal loop. LightlyTrain was not measured in this run (it would need its own "
        "virtual environment with a second torch install).", "",
    ])
    update_section(HEADING, section)
    print(section)


if __name__ == "__main__":
    main()
