"""A pipeline file: named steps, each a stage with its config; `${step}` names another step's output.

    workdir: runs/quickstart
    steps:
      data:     {stage: demo-data, config: {n_unlabeled: 600}}
      pretrain: {base: ../configs/pretrain/dino_vit_tiny.yaml,
                 config: {data: {manifest: "${data}/manifest.csv"}}}

The references make the DAG: a step runs after every step it names. `base` is a stage config file
(relative to the pipeline file) that `config` is merged over; `stage` defaults to the step's name.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

from medalign import config
from medalign.errors import ConfigError
from medalign.config import STAGES

REF = re.compile(r"\$\{([A-Za-z_][\w-]*)\}")


@dataclass
class Step:
    name: str
    stage: str
    raw: dict  # the config with ${refs} unresolved: what the cache key sees
    cfg: config.Section  # raw, validated
    deps: list[str]


@dataclass
class Pipeline:
    path: Path
    workdir: Path
    steps: list[Step]  # in an order that runs each step after its dependencies


def load(path: str | Path, overrides: list[str] = (), workdir: Path | None = None) -> Pipeline:
    """Reads a pipeline; overrides are `step.key=value` (e.g. finetune.optim.lr=1e-3)."""
    path = Path(path)
    raw = config.read_yaml(path)
    unknown = set(raw) - {"workdir", "steps"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {sorted(unknown)}; expected workdir, steps")
    entries = raw.get("steps") or {}
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{path}: 'steps' must map step names to stages")
    by_step: dict[str, list[str]] = {}
    for item in overrides:
        tilde, body = ("~", item[1:]) if item.startswith("~") else ("", item)
        step, dot, rest = body.partition(".")
        if step not in entries or not dot:
            raise ConfigError(f"override {item}: expected STEP.key=value with STEP one of {list(entries)}")
        by_step.setdefault(step, []).append(tilde + rest)
    steps = [_step(path, name, entry, by_step.get(name, [])) for name, entry in entries.items()]
    workdir = workdir or Path(raw.get("workdir") or Path("runs") / path.stem)
    return Pipeline(path, workdir, _ordered(path, steps))


def _step(path: Path, name: str, entry, overrides: list[str]) -> Step:
    if not isinstance(entry, dict) or set(entry) - {"stage", "base", "config"}:
        raise ConfigError(f"{path}: step '{name}' takes the keys stage, base and config")
    stage = entry.get("stage", name)
    if stage not in STAGES:
        raise ConfigError(f"{path}: step '{name}' names unknown stage '{stage}' (stages: {', '.join(STAGES)})")
    raw = config.read_yaml(path.parent / entry["base"]) if entry.get("base") else {}
    _merge(raw, copy.deepcopy(entry.get("config") or {}))
    config.apply_overrides(raw, overrides)
    source = f"{path} step '{name}'"
    cfg = config.validate(STAGES[stage].config, raw, source, overrides)  # fail early, before anything runs
    return Step(name, stage, raw, cfg, deps=sorted(set(REF.findall(str(raw)))))


def _merge(base: dict, top: dict) -> None:
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def _ordered(path: Path, steps: list[Step]) -> list[Step]:
    names = {s.name for s in steps}
    for s in steps:
        missing = [d for d in s.deps if d not in names]
        if missing:
            raise ConfigError(f"{path}: step '{s.name}' refers to unknown step(s) {missing}")
    done: list[Step] = []
    pending = list(steps)
    while pending:
        ready = [s for s in pending if all(d in {x.name for x in done} for d in s.deps)]
        if not ready:
            raise ConfigError(f"{path}: steps {[s.name for s in pending]} depend on each other in a cycle")
        done += ready
        pending = [s for s in pending if s not in ready]
    return done


def resolve(raw, outputs: dict[str, Path]):
    """Replaces every ${step} with that step's output folder."""
    if isinstance(raw, dict):
        return {k: resolve(v, outputs) for k, v in raw.items()}
    if isinstance(raw, list):
        return [resolve(v, outputs) for v in raw]
    if isinstance(raw, str):
        return REF.sub(lambda m: str(outputs[m.group(1)]), raw)
    return raw
