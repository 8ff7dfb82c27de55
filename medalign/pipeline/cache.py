"""Cache keys: what determines a stage's output, hashed; and why an old output no longer fits.

key = sha256 of canonical JSON of {stage, config without cosmetic fields, upstream keys, input
fingerprints, medalign version}. Inputs produced by an upstream step are covered by its key and
not fingerprinted again; outside inputs (manifests, weights) are fingerprinted from their files.
"""
from __future__ import annotations

import json
from pathlib import Path

from medalign import __version__, config
from medalign.data.manifest import fingerprint as manifest_fingerprint
from medalign.pipeline import store
from medalign.pipeline.spec import REF

KEY_LENGTH = 16  # hex characters of the sha256 in folder names; 64 bits is plenty per step


def record(stage: str, cfg: config.Section, upstream: dict[str, str]) -> dict:
    inputs = getattr(cfg, "inputs", dict)()
    return {
        "stage": stage,
        "config": config.semantic(cfg),
        "upstream": upstream,
        "inputs": {k: fingerprint(v) for k, v in inputs.items() if v and not REF.search(v)},
        "version": __version__,
    }


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


def explain(step_dir: Path, key: str, rec: dict) -> str:
    """Why there is no output for `rec`: what changed since the newest complete output."""
    if any(step_dir.glob(f".tmp-{key}-*")):
        return "an earlier run did not finish"
    prev = store.latest_complete(step_dir)
    if prev is None:
        return "never run"
    old = json.loads((prev / "key.json").read_text())
    reasons = []
    if old.get("version") != rec["version"]:
        reasons.append(f"medalign {old.get('version')} -> {rec['version']}")
    if old.get("stage") != rec["stage"]:
        reasons.append(f"stage {old.get('stage')} -> {rec['stage']}")
    before, after = _flatten(old.get("config", {})), _flatten(rec["config"])
    changed = [f"{k} {before.get(k, '(unset)')} -> {after.get(k, '(unset)')}"
               for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    if changed:
        reasons.append("config " + ", ".join(changed))
    upstream = [n for n, k in rec["upstream"].items() if old.get("upstream", {}).get(n) != k]
    if upstream:
        reasons.append("upstream " + ", ".join(upstream) + " changed")
    inputs = [n for n, fp in rec["inputs"].items() if old.get("inputs", {}).get(n) != fp]
    if inputs:
        reasons.append("input " + ", ".join(inputs) + " changed")
    return "; ".join(reasons) or "inputs changed"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = json.dumps(v) if isinstance(v, list | dict) else v
    return out
