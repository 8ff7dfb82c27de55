"""The Python API, for notebooks and scripts: the functions the command line calls.

    import medalign

    pre = medalign.pretrain("configs/pretrain/simclr_resnet18.yaml", overrides=["data.manifest=data/pool.csv"])
    pre.path, pre.metrics, pre.outcome          # runs/pretrain/KEY, its metrics.json, "ran"
    tuned = medalign.finetune({"backbone": {"checkpoint": str(pre.path)}, "data": {"manifest": "data/labeled.csv"}})
    steps = medalign.run("pipelines/quickstart.yaml", overrides=["finetune.optim.lr=1e-3"])
    steps["evaluate"].metrics["auroc"]

A stage's output goes where `medalign STAGE` puts it (WORKDIR/STAGE/KEY, workdir "runs"), and a
pipeline's where `medalign run` does, so the CLI and a notebook find each other's cached outputs.
Errors are raised (`medalign.errors.MedalignError` and its kinds), never turned into exits.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from medalign import config
from medalign.config import STAGES
from medalign.pipeline import cache, history, runner, spec

ConfigLike = str | Path | dict | config.Section | None


@dataclass(frozen=True)
class Output:
    path: Path
    metrics: dict
    outcome: str  # cached, ran or resumed


def stage(name: str, cfg: ConfigLike = None, *, out: str | Path | None = None, workdir: str | Path = "runs",
          overrides: Collection[str] = (), force: bool = False, lock_timeout: float | None = None) -> Output:
    """Runs stage `name` (cached by key) on a YAML file, a dict or a config object, with key=value overrides."""
    st = STAGES[name]
    section = _config(st.config, cfg, list(overrides))
    rec, inventories = cache.record(name, section, upstream={})
    out = Path(out) if out else Path(workdir) / name / cache.key_of(rec)
    metrics, outcome = runner.execute(st, section, out, rec, inventories, label=name, force=force,
                                      lock_timeout=lock_timeout)
    return Output(out, metrics, outcome)


def pretrain(cfg: ConfigLike = None, **kw) -> Output:
    """Continued self-supervised pretraining; keywords as for `stage`."""
    return stage("pretrain", cfg, **kw)


def finetune(cfg: ConfigLike = None, **kw) -> Output:
    """Fine-tuning with an adapter on the labels; keywords as for `stage`."""
    return stage("finetune", cfg, **kw)


def evaluate(cfg: ConfigLike = None, **kw) -> Output:
    """Metrics with intervals, subgroups and report.html; keywords as for `stage`."""
    return stage("evaluate", cfg, **kw)


def estimate(cfg: ConfigLike = None, **kw) -> Output:
    """Transferability scores of candidate starting points; keywords as for `stage`."""
    return stage("estimate", cfg, **kw)


def run(pipeline: str | Path, overrides: Collection[str] = (), *, workdir: str | Path | None = None,
        only: Collection[str] = (), until: str | None = None, force: bool | Collection[str] = False,
        lock_timeout: float | None = None) -> dict[str, Output]:
    """Runs a pipeline as `medalign run` does (history record included); returns each step it went through."""
    p = spec.load(pipeline, list(overrides), Path(workdir) if workdir else None)
    entry = history.Entry(p.path, p.workdir, p.overrides)
    runner.run(p, only=list(only), until=until, force=force, lock_timeout=lock_timeout, entry=entry)
    return {s["step"]: Output(Path(s["out"]), json.loads((Path(s["out"]) / "metrics.json").read_text()), s["outcome"])
            for s in entry.record["steps"]}


def _config(cls: type[config.Section], cfg: ConfigLike, overrides: list[str]) -> config.Section:
    if cfg is None or isinstance(cfg, str | Path):
        return config.load(cls, cfg, overrides)
    raw = cfg.model_dump(mode="json") if isinstance(cfg, config.Section) else copy.deepcopy(cfg)
    config.apply_overrides(raw, overrides)
    return config.validate(cls, raw, "the config given", overrides)
