"""Pretraining throughput: `medalign pretrain` against a minimal hand-written loop and LightlyTrain.

    .venv/bin/python benchmarks/ssl_throughput.py [--repeats 3] [--epochs 2] [--lightly-train-venv DIR]

The minimal loop is the ceiling: the same timm model, lightly loss and head, albumentations views,
batch, DataLoader and threads, and nothing else (no logging, resume checks, progress bar).
LightlyTrain (`lightly-train`, never a medalign dependency) runs from its own virtual environment,
created on first use with the same timm, on the same timm model, views (sizes, counts, channels),
head sizes, optimizer family, batch and threads; its own per-step timer (profiling/batch_time plus
profiling/data_time in metrics.jsonl) gives its rate. medalign and the loop time each optimizer step
from the end of one to the end of the next, data loading included. All skip the first 3 steps
(allocator and thread-pool warm-up). Runs are interleaved (medalign, loop, LightlyTrain, medalign,
...) so that a busy machine slows all alike; the table reports the median images/s over all timed
steps of all repeats and the spread of the per-run medians.
Writes the section "## Pretraining throughput" of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import machine, stage_log, update_section

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
# The same work in LightlyTrain's terms: model, method with our head sizes, views, optimizer family.
LIGHTLY_TRAIN = {
    "SimCLR, resnet18, 3 channels, 64 px, batch 64": dict(
        model=("resnet18", dict(in_chans=3)), method="simclr",
        method_args=dict(hidden_dim=512, output_dim=128, temperature=0.2),
        transform_args=dict(image_size=(64, 64), num_channels=3)),
    "DINO, vit_tiny (patch 8, 6 blocks), 1 channel, 64 px + 2 local crops, batch 64": dict(
        model=("vit_tiny_patch16_224", dict(patch_size=8, depth=6, img_size=64, in_chans=1, dynamic_img_size=True)),
        method="dino",
        method_args=dict(hidden_dim=512, bottleneck_dim=128, output_dim=1024),
        transform_args=dict(image_size=(64, 64), num_channels=1,
                            local_view=dict(num_views=2, view_size=(32, 32)))),
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
    return [s["img_per_s"] for s in stage_log(out)[0]]


def minimal_rates(manifest: Path, args: list[str], epochs: int) -> list[float]:
    overrides = [f"data.manifest={manifest}", f"optim.epochs={epochs}", *args]
    r = subprocess.run([sys.executable, "-c", MINIMAL, json.dumps(overrides)], capture_output=True, text=True,
                       cwd=ROOT)
    if r.returncode:
        sys.exit(f"minimal loop failed\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# Runs inside LightlyTrain's environment: argv = [settings json, train image list, out dir].
LIGHTLY_TRAIN_RUN = r'''
import json, os, sys
import timm, torch
import lightly_train
settings, files, out = json.loads(sys.argv[1]), json.loads(open(sys.argv[2]).read()), sys.argv[3]
name, kwargs = settings.pop("model")
torch.set_num_threads(settings.pop("threads"))
if __name__ == "__main__":
    lightly_train.train(out=out, data=files, model=timm.create_model(name, num_classes=0, **kwargs),
                        num_workers=0, accelerator="cpu", devices=1, overwrite=True, optim="adamw",
                        loggers={"tensorboard": None}, trainer_args={"log_every_n_steps": 1}, **settings)
'''


def lightly_train_python(venv: Path) -> Path:
    """LightlyTrain's own interpreter, installed on first use beside (never into) medalign's."""
    python = venv / "bin" / "python"
    if not python.exists():
        import timm
        print(f"installing lightly-train into {venv} (once; a few minutes)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "lightly-train", f"timm=={timm.__version__}"],
                       check=True)
    return python


def lightly_train_rates(python: Path, files: Path, case: str, epochs: int, batch: int, out: Path) -> list[float]:
    import torch
    settings = {**LIGHTLY_TRAIN[case], "epochs": epochs, "batch_size": batch, "threads": torch.get_num_threads()}
    env = {**os.environ, "LIGHTLY_TRAIN_EVENTS_DISABLED": "1"}
    r = subprocess.run([str(python), "-c", LIGHTLY_TRAIN_RUN, json.dumps(settings), str(files), str(out)],
                       capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"LightlyTrain failed\n{r.stderr[-2000:]}")
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # its timer starts each step after the batch arrives; the wait for it is logged as data_time
    return [batch / (s["profiling/batch_time"] + s["profiling/data_time"]) for s in steps
            if "profiling/batch_time" in s and "profiling/data_time" in s]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lightly-train-venv", type=Path,
                    default=Path.home() / ".cache" / "medalign" / "lightly-train-venv")
    args = ap.parse_args()
    lt_python = lightly_train_python(args.lightly_train_venv)
    lt_version = subprocess.run([str(lt_python), "-c", "import lightly_train; print(lightly_train.__version__)"],
                                capture_output=True, text=True, check=True).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="medalign-throughput-"))
    subprocess.run([sys.executable, "-m", "medalign", "demo-data", str(work / "demo")], check=True,
                   capture_output=True, cwd=ROOT)
    manifest = work / "demo" / "manifest.csv"
    import csv
    with manifest.open() as f:  # LightlyTrain reads the images pretrain reads, as a file list
        train = [str(work / "demo" / r["path"]) for r in csv.DictReader(f) if r["split"] in ("unlabeled", "train")]
    files = work / "train_files.json"
    files.write_text(json.dumps(train))

    import torch
    rows, verdicts = [], []
    for case, case_args in CASES.items():
        runs = {"medalign": [], "loop": [], "lightly_train": []}
        batch = int(next(a for a in case_args if a.startswith("data.batch_size=")).split("=")[1])
        for i in range(args.repeats):
            runs["medalign"].append(medalign_rates(manifest, case_args, args.epochs, work / f"run{len(rows)}{i}")[SKIP:])
            runs["loop"].append(minimal_rates(manifest, case_args, args.epochs)[SKIP:])
            runs["lightly_train"].append(lightly_train_rates(lt_python, files, case, args.epochs, batch,
                                                             work / f"lt{len(rows)}{i}")[SKIP:])
        med = {k: statistics.median([r for run in v for r in run]) for k, v in runs.items()}
        per_run = {k: [statistics.median(run) for run in v] for k, v in runs.items()}

        def cell(k: str) -> str:
            return f"{med[k]:.1f} ({min(per_run[k]):.1f}-{max(per_run[k]):.1f})"

        def ratio(k: str) -> str:
            each = [m / o for m, o in zip(per_run["medalign"], per_run[k])]
            return f"{med['medalign'] / med[k]:.2f}x ({', '.join(f'{r:.2f}' for r in each)})"

        rows.append(f"| {case} | {cell('medalign')} | {cell('loop')} | {cell('lightly_train')} | "
                    f"{ratio('loop')} | {ratio('lightly_train')} |")
        for k, target in (("loop", 0.95), ("lightly_train", 1.3)):
            got = med["medalign"] / med[k]
            verdicts.append(f"{case.split(',')[0]}, medalign / {k.replace('_', ' ')} >= {target}x: "
                            f"{'met' if got >= target else f'missed by {target - got:.2f}x'} ({got:.2f}x).")
        print(rows[-1], flush=True)

    section = "\n".join([
        HEADING, "",
        f"Machine: {machine()}, "
        f"{torch.get_num_threads()} threads, no DataLoader workers; {time.strftime('%Y-%m-%d')}. The 720 demo "
        f"images, {args.epochs} epochs per run, {args.repeats} interleaved repeats, first {SKIP} steps of each run "
        "skipped. Images/s: median over every timed step (range of the per-run medians).", "",
        f"LightlyTrain {lt_version} from its own virtual environment, AdamW, same head sizes and views.", "",
        "| case | medalign pretrain | minimal loop | LightlyTrain | medalign / loop (per repeat) | "
        "medalign / LightlyTrain (per repeat) |", "|---|---|---|---|---|---|",
        *rows, "",
        "Targets: >= 0.95x the minimal loop and >= 1.3x LightlyTrain. " + " ".join(verdicts), "",
    ])
    update_section(HEADING, section)
    print(section)


if __name__ == "__main__":
    main()
