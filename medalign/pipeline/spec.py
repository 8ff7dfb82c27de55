"""A pipeline file: named steps, each a stage with its config; `${step}` names another step's output.

    workdir: runs/quickstart
    steps:
      data:     {stage: demo-data, config: {n_unlabeled: 600}}
      pretrain: {base: ../configs/pretrain/dino_vit_tiny.yaml,
                 config: {data: {manifest: "${data}/manifest.csv"}}}

The references make the DAG: a step runs after every step it names. `base` is a stage config file
(relative to the pipeline file) that `config` is merged over; `stage` defaults to the step's name.
`launcher: {kind: torchrun, nproc_per_node: 4}` runs a step on several processes (pipeline.launch).

A sweep: `matrix` maps config keys to values, and the step runs once per combination, named
`finetune[seed=0]` and so on; a list of such maps instead names each combination itself, for keys
that go together rather than cross (`[{seed: 0, data.subset: fewshot_p10_s0}, {seed: 1, ...}]`).
A step that names a swept step fans out with it (one `evaluate` per `finetune`; steps sweeping the
same key pair up rather than multiply), and a list item `${evaluate[*]}` stands for every run of
that step, which is how a `collect` step gathers them:

      finetune: {matrix: {seed: [0, 1, 2]}, config: {...}}
      evaluate: {config: {model: "${finetune}"}}
      summary:  {stage: collect, config: {runs: ["${evaluate[*]}"]}}
"""
from __future__ import annotations

import copy
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from medalign import config
from medalign.errors import ConfigError
from medalign.config import STAGES
from medalign.pipeline.launch import Launcher

REF = re.compile(r"\$\{([A-Za-z_][\w-]*(?:\[[^\]]*\])?)\}")  # ${step}, ${step[seed=0]}, ${step[*]}
EVERY = "[*]"


@dataclass
class Step:
    name: str  # `finetune`, or `finetune[seed=0]` for one run of a sweep
    stage: str
    raw: dict  # the config with ${refs} unresolved: what the cache key sees
    cfg: config.Section  # raw, validated
    deps: list[str]
    group: str = ""  # the pipeline file's step name: the runs of a sweep share its output folder
    launcher: Launcher | None = None  # how its processes start (torchrun); not part of the cache key
    combo: dict = field(default_factory=dict)  # the sweep's values for this run, its own and its upstream's

    def __post_init__(self):
        self.group = self.group or self.name


@dataclass
class Pipeline:
    path: Path
    workdir: Path
    steps: list[Step]  # in an order that runs each step after its dependencies
    overrides: list[str] = field(default_factory=list)  # as given: a launched step's child hears them too


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
    steps = _expand(path, {name: _entry(path, name, entry, by_step.get(name, [])) for name, entry in entries.items()},
                    by_step)
    workdir = workdir or Path(raw.get("workdir") or Path("runs") / path.stem)
    return Pipeline(path, workdir, steps, list(overrides))


def _entry(path: Path, name: str, entry, overrides: list[str]) -> tuple[str, dict, list[dict], Launcher | None]:
    """(stage, raw config, the matrix's combinations, launcher) of one step of the file, before any
    sweep is expanded."""
    if not isinstance(entry, dict) or set(entry) - {"stage", "base", "config", "matrix", "launcher"}:
        raise ConfigError(f"{path}: step '{name}' takes the keys stage, base, config, matrix and launcher")
    stage = entry.get("stage", name)
    if stage not in STAGES:
        raise ConfigError(f"{path}: step '{name}' names unknown stage '{stage}' (stages: {', '.join(STAGES)})")
    raw = config.read_yaml(path.parent / entry["base"]) if entry.get("base") else {}
    _merge(raw, copy.deepcopy(entry.get("config") or {}))
    config.apply_overrides(raw, overrides)
    launcher = entry.get("launcher")
    if launcher is not None:
        if not isinstance(launcher, dict):
            raise ConfigError(f"{path}: step '{name}': launcher is a map, e.g. {{kind: torchrun, nproc_per_node: 4}}")
        launcher = config.validate(Launcher, launcher, f"{path} step '{name}' launcher")
    return stage, raw, _combinations(path, name, entry.get("matrix") or {}), launcher


def _combinations(path: Path, name: str, matrix) -> list[dict]:
    """A map of keys to value lists is crossed; a list of maps is taken as it is."""
    if isinstance(matrix, dict) and all(isinstance(v, list) and v for v in matrix.values()):
        return [dict(zip(matrix, values)) for values in itertools.product(*matrix.values())]
    if isinstance(matrix, list) and matrix and all(isinstance(c, dict) and c for c in matrix):
        if len({tuple(c) for c in matrix}) > 1:
            raise ConfigError(f"{path}: step '{name}': every combination of a matrix list sets the same keys")
        return matrix
    raise ConfigError(f"{path}: step '{name}': matrix maps config keys to non-empty lists of values, "
                      "or is a list of such maps, one per run")


def _expand(path: Path, entries: dict[str, tuple], overrides: dict[str, list[str]]) -> list[Step]:
    """One Step per run: a swept step per combination of its matrix, crossed with (or, on a shared
    key, matched to) the combinations of every swept step it names."""
    runs: dict[str, list[tuple[dict, str]]] = {}  # step -> [(combination, run name)]
    steps = []
    for name in _group_order(path, entries):
        stage, raw, combos, launcher = entries[name]
        found = REF.findall(str(raw))
        refs = {r.removesuffix(EVERY) for r in found}
        swept = list(combos[0])
        for dep in sorted(r for r in refs if r in found):  # ${dep[*]} gathers, ${dep} fans out
            combos = [{**a, **b} for a in combos for b, _ in runs[dep] if _agree(a, b)]
        runs[name] = []
        for combo in combos:
            run = f"{name}[{','.join(f'{k}={v}' for k, v in combo.items())}]" if combo else name
            r = copy.deepcopy(raw)
            config.apply_overrides(r, [f"{k}={json.dumps(combo[k])}" for k in swept])
            r = _pick(r, {dep: [n for c, n in runs[dep] if _agree(c, combo)] for dep in refs}, f"{path} step '{run}'")
            # fail early, before anything runs
            cfg = config.validate(STAGES[stage].config, r, f"{path} step '{run}'", overrides.get(name, []))
            steps.append(Step(run, stage, r, cfg, deps=sorted(set(REF.findall(str(r)))), group=name,
                              launcher=launcher, combo=combo))
            runs[name].append((combo, run))
    return steps


def _agree(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in a.keys() & b.keys())


def _pick(raw, runs: dict[str, list[str]], where: str):
    """Each ${step} -> the one run of it that matches; a list item ${step[*]} -> all of them."""
    if isinstance(raw, dict):
        return {k: _pick(v, runs, where) for k, v in raw.items()}
    if isinstance(raw, list):
        out = []
        for v in raw:
            m = REF.fullmatch(v) if isinstance(v, str) else None
            if m and m.group(1).endswith(EVERY):
                out += [f"${{{n}}}" for n in runs[m.group(1).removesuffix(EVERY)]]
            else:
                out.append(_pick(v, runs, where))
        return out
    if isinstance(raw, str):
        if EVERY in raw:
            raise ConfigError(f"{where}: '{raw}': ${{step[*]}} stands for several folders, so it must be a whole "
                              "list item (runs: [\"${step[*]}\"])")
        return REF.sub(lambda m: f"${{{runs[m.group(1)][0]}}}", raw)
    return raw


def _group_order(path: Path, entries: dict[str, tuple]) -> list[str]:
    """The file's steps in an order that puts each after every step it names."""
    deps = {n: {r.removesuffix(EVERY) for r in REF.findall(str(raw))} for n, (_, raw, *_) in entries.items()}
    for name, names in deps.items():
        missing = sorted(names - set(entries))
        if missing:
            raise ConfigError(f"{path}: step '{name}' refers to unknown step(s) {missing}")
    done: list[str] = []
    while len(done) < len(entries):
        ready = [n for n in entries if n not in done and deps[n] <= set(done)]
        if not ready:
            raise ConfigError(f"{path}: steps {[n for n in entries if n not in done]} depend on each other "
                              "in a cycle")
        done += ready
    return done


def _merge(base: dict, top: dict) -> None:
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def resolve(raw, outputs: dict[str, Path]):
    """Replaces every ${step} with that step's output folder."""
    if isinstance(raw, dict):
        return {k: resolve(v, outputs) for k, v in raw.items()}
    if isinstance(raw, list):
        return [resolve(v, outputs) for v in raw]
    if isinstance(raw, str):
        return REF.sub(lambda m: str(outputs[m.group(1)]), raw)
    return raw
