"""Times the quickstart pipeline end to end and writes benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/quickstart.py

Measures: CLI start-up (`medalign --help`), the first run of pipelines/quickstart.yaml in a fresh
workdir (per step, from log lines), a second run (all cached), a run with one finetune value
changed (finetune + evaluate only), and the evaluation metrics it ends with.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import update_section

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Quickstart (`benchmarks/quickstart.py`)"
MEDALIGN = [sys.executable, "-m", "medalign"]


def timed(args: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if r.returncode:
        sys.exit(f"failed: {' '.join(args)}\n{r.stderr[-2000:]}")
    return time.perf_counter() - start, r.stdout


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="medalign-bench-"))
    pipeline = ["run", "pipelines/quickstart.yaml", "--workdir", str(work)]
    help_s = min(timed([*MEDALIGN, "--help"])[0] for _ in range(3))
    first_s, first = timed([*MEDALIGN, *pipeline])
    cached_s, cached = timed([*MEDALIGN, *pipeline])
    changed_s, changed = timed([*MEDALIGN, *pipeline, "finetune.optim.lr=3e-3"])
    # the first run's own folders, from what it printed: the changed run added others beside them
    outputs = dict(re.findall(r"^\[(\w+)\] done +(\S+)$", first, re.M))
    steps = {}
    for step, out in outputs.items():
        log = Path(out) / "log.jsonl"
        last = [json.loads(x) for x in log.read_text().splitlines()][-1] if log.exists() else {}
        steps[step] = last.get("elapsed_s")
    metrics = json.loads((Path(outputs["evaluate"]) / "metrics.json").read_text())
    reran = re.findall(r"\[(\w+)\] running", changed)
    shutil.rmtree(work)

    import torch

    lines = [
        HEADING, "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__}, CUDA {'yes' if torch.cuda.is_available() else 'no'}; "
        f"{time.strftime('%Y-%m-%d')}.", "",
        "| what | seconds |", "|---|---|",
        f"| `medalign --help` (start-up, best of 3) | {help_s:.2f} |",
        f"| first run, whole pipeline (4 stages, one process) | {first_s:.1f} |",
        *(f"| - {s} training loop | {v:.1f} |" for s, v in steps.items() if v),
        f"| second run, all cached | {cached_s:.2f} |",
        f"| `finetune.optim.lr=3e-3`: reran {' + '.join(reran)} | {changed_s:.1f} |", "",
        f"Test metrics of the first run: accuracy {metrics['accuracy']:.3f}, balanced accuracy "
        f"{metrics['balanced_accuracy']:.3f}, AUROC {metrics['auroc']:.3f} (n={metrics['n']}, synthetic data).", "",
    ]
    update_section(HEADING, "\n".join(lines))
    print("\n".join(lines))
    assert "cached" in cached and "running" not in cached, "second run was not fully cached"


if __name__ == "__main__":
    main()
