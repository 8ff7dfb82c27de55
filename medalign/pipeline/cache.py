"""Cache keys: what determines a stage's output, hashed; and why an old output no longer fits.

key = sha256 of canonical JSON of {stage, config without cosmetic fields, upstream keys, input
fingerprints, medalign version}. Inputs produced by an upstream step are covered by its key and
not fingerprinted again; outside inputs (manifests, weights) are fingerprinted from their files,
and their paths are made absolute: `m.csv` and `/data/m.csv` spell the same input.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from medalign import __version__, config
from medalign.data.manifest import fingerprint as manifest_fingerprint
from medalign.pipeline import store
from medalign.pipeline.spec import REF

KEY_LENGTH = 16  # hex characters of the sha256 in folder names; 64 bits is plenty per step


def record(stage: str, cfg: config.Section, upstream: dict[str, str]) -> dict:
    outside = {k: v for k, v in getattr(cfg, "inputs", dict)().items() if v and not REF.search(v)}
    semantic = config.semantic(cfg)
    for dotted, path in outside.items():
        *parents, leaf = dotted.split(".")
        section = semantic
        for p in parents:
            section = section[_step(section, p)]
        section[_step(section, leaf)] = os.path.abspath(path)
    return {
        "stage": stage,
        "config": semantic,
        "upstream": upstream,
        "inputs": {k: fingerprint(v) for k, v in outside.items()},
        "version": __version__,
    }


def _step(section: dict | list, part: str) -> str | int:
    """An input's dotted key names list items by index: `candidates.0.backbone.checkpoint`."""
    return int(part) if isinstance(section, list) else part


def key_of(rec: dict) -> str:
    return config.digest(rec)[:KEY_LENGTH]


def fingerprint(path: str) -> str:
    p = Path(path)
    if p.is_file() and p.suffix == ".csv":
        return manifest_fingerprint(p)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p] if p.exists() else []
    if not files:
        return "missing"
    return config.digest([[str(f.relative_to(p) if p.is_dir() else f.name), f.stat().st_size,
                           f.stat().st_mtime_ns] for f in files])


def explain(out: Path, rec: dict) -> str:
    """Why `out` is not an output of `rec`: what changed since the output it replaces.

    That is `out` itself when it is complete (an explicit --out whose config changed), else, for a
    keyed output (named by the key of `rec`), the newest complete output of the same step.
    """
    if store.is_complete(out):
        prev = out
    elif out.name == key_of(rec):
        prev = store.latest_complete(out.parent)
    else:
        prev = None
    if prev is None:
        return "never run"
    try:
        old = json.loads((prev / "key.json").read_text())
    except (OSError, ValueError):
        return f"{prev / 'key.json'} is unreadable"
    return "; ".join(diff(old, rec)) or "inputs changed"


def diff(old: dict, new: dict) -> list[str]:
    """What differs between two records, one phrase each (e.g. "config optim.lr 0.001 -> 0.002")."""
    reasons = []
    if old.get("version") != new["version"]:
        reasons.append(f"medalign {old.get('version')} -> {new['version']}")
    if old.get("stage") != new["stage"]:
        reasons.append(f"stage {old.get('stage')} -> {new['stage']}")
    before, after = _flatten(old.get("config", {})), _flatten(new["config"])
    changed = [f"{k} {before.get(k, '(unset)')} -> {after.get(k, '(unset)')}"
               for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    if changed:
        reasons.append("config " + ", ".join(changed))
    upstream = [n for n, k in new["upstream"].items() if old.get("upstream", {}).get(n) != k]
    if upstream:
        reasons.append("upstream " + ", ".join(upstream) + " changed")
    inputs = [n for n, fp in new["inputs"].items() if old.get("inputs", {}).get(n) != fp]
    if inputs:
        reasons.append("input " + ", ".join(inputs) + " changed")
    return reasons


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = json.dumps(v) if isinstance(v, list | dict) else v
    return out
