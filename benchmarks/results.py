"""benchmarks/RESULTS.md is shared by every benchmark script: each replaces its own section only."""
from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    """What a section's numbers were measured on: architecture, cores, the GPU if any, torch."""
    import torch
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}; torch {torch.__version__}"


def update_section(heading: str, section: str, results: Path = RESULTS, before: str | None = None) -> None:
    """Replaces the section under `heading` (up to the next `## `); a new one goes ahead of the
    section headed `before` where there is one (a benchmark's hand-written reading stays below
    its tables), else at the end. Atomic."""
    text = results.read_text() if results.is_file() else "# Benchmark results\n\n"
    pattern = re.compile(r"^" + re.escape(heading) + r"[^\n]*\n.*?(?=^## |\Z)", re.M | re.S)
    at = re.search(r"^" + re.escape(before), text, re.M) if before else None
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text, count=1)
    elif at:
        text = text[:at.start()] + section.rstrip("\n") + "\n\n" + text[at.start():]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    tmp = results.with_suffix(".tmp")
    tmp.write_text(text.rstrip("\n") + "\n")
    tmp.replace(results)


def stage_log(out: Path) -> tuple[list[dict], list[dict]]:
    """A stage output's log.jsonl: one record per optimizer step, and one summary per epoch."""
    lines = [json.loads(x) for x in (Path(out) / "log.jsonl").read_text().splitlines()]
    return [x for x in lines if not x.get("summary")], [x for x in lines if x.get("summary")]
