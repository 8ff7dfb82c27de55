"""Plans a pipeline against its cache, runs what is stale, and executes single stages atomically."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from medalign import config
from medalign.pipeline import cache, store
from medalign.pipeline.spec import Pipeline, Step, resolve
from medalign.config import STAGES, Stage


@dataclass
class Planned:
    step: Step
    key: str
    record: dict
    out: Path
    cached: bool
    reason: str


def plan(pipeline: Pipeline) -> list[Planned]:
    """Every step's key, computed from configs and upstream keys alone: nothing needs to run first."""
    keys: dict[str, str] = {}
    planned = []
    for step in pipeline.steps:
        rec = cache.record(step.stage, step.cfg, {d: keys[d] for d in step.deps})
        key = keys[step.name] = cache.key_of(rec)
        out = pipeline.workdir / step.name / key
        cached = store.is_complete(out)
        reason = "up to date" if cached else cache.explain(out.parent, key, rec)
        planned.append(Planned(step, key, rec, out, cached, reason))
    return planned


def run(pipeline: Pipeline, force: bool = False, echo: Callable[[str], None] = print) -> dict[str, Path]:
    """Runs the stale steps in order; returns every step's output folder."""
    outputs: dict[str, Path] = {}
    for p in plan(pipeline):
        outputs[p.step.name] = p.out
        if p.cached and not force:
            echo(f"[{p.step.name}] cached  {p.out}")
            continue
        echo(f"[{p.step.name}] running {p.step.stage}: {'forced' if p.cached else p.reason}")
        source = f"{pipeline.path} step '{p.step.name}'"
        cfg = config.validate(STAGES[p.step.stage].config, resolve(p.step.raw, outputs), source)
        execute(STAGES[p.step.stage], cfg, p.out, p.record)
        echo(f"[{p.step.name}] done    {p.out}")
    return outputs


def execute(stage: Stage, cfg: config.Section, out: Path, record: dict) -> dict:
    """Runs one stage into `out`: resolved config and key first, metrics, then COMPLETE."""
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: only rank 0 writes; the others compute alongside
        scratch = Path(tempfile.mkdtemp(prefix="medalign-rank"))
        try:
            return stage.run(cfg, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    with store.staged(out) as tmp:
        (tmp / "config.yaml").write_text(config.dump(cfg))
        (tmp / "key.json").write_text(json.dumps(record, indent=2) + "\n")
        metrics = stage.run(cfg, tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
