"""Cache keys: what determines a stage's output, hashed; and why an old output no longer fits.

key = sha256 of canonical JSON of {stage, config without cosmetic fields, upstream keys, input
fingerprints, medalign version}. Inputs produced by an upstream step are covered by its key and
not fingerprinted again; outside inputs (manifests, weights) are fingerprinted from their files,
and their paths are made absolute: `m.csv` and `/data/m.csv` spell the same input. A manifest's
fingerprint covers the images it lists (`data.fingerprint`: their size and mtime, or their content,
marked `content:`);
each output keeps the list (INVENTORY) so that `explain` can say how many images came and went.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from medalign import __version__, config
from medalign.data import manifest
from medalign.pipeline import store
from medalign.pipeline.spec import REF

KEY_LENGTH = 16  # hex characters of the sha256 in folder names; 64 bits is plenty per step
INVENTORY = "inputs.json"
_UNSET = object()


def record(stage: str, cfg: config.Section, upstream: dict[str, str]) -> tuple[dict, dict[str, dict]]:
    """(the record, the inventory of each outside manifest: its bytes' sha256 and every image's
    signature). One look at each image gives both: the inventory is what the output keeps (INVENTORY)
    and what `explain` compares, so neither has to stat a large archive again."""
    outside = {k: v for k, v in getattr(cfg, "inputs", dict)().items() if v and not REF.search(v)}
    semantic = config.semantic(cfg)
    fingerprints, inventories = {}, {}
    for dotted, path in outside.items():
        *parents, leaf = dotted.split(".")
        section = semantic
        for p in parents:
            section = section[_step(section, p)]
        section[_step(section, leaf)] = os.path.abspath(path)
        content = _by_content(cfg, dotted)
        if _is_manifest(path):
            images = manifest.inventory(path, content)
            inventories[dotted] = {"manifest_sha256": manifest.file_sha256(Path(path)), "images": images}
        fingerprints[dotted] = fingerprint(path, content, inventories.get(dotted, {}).get("images"))
    rec = {"stage": stage, "config": semantic, "upstream": upstream, "inputs": fingerprints, "version": __version__}
    return rec, inventories


def _by_content(cfg: config.Section, dotted: str) -> bool:
    """`data.manifest` follows `data.fingerprint`; inputs in sections without that key go by stat."""
    section = cfg
    for part in dotted.split(".")[:-1]:
        section = section[int(part)] if isinstance(section, list) else getattr(section, part)
    return getattr(section, "fingerprint", "stat") == "content"


def _is_manifest(path: str) -> bool:
    return Path(path).suffix == ".csv" and Path(path).is_file()


def _step(section: dict | list, part: str) -> str | int:
    """An input's dotted key names list items by index: `candidates.0.backbone.checkpoint`."""
    return int(part) if isinstance(section, list) else part


def key_of(rec: dict) -> str:
    return config.digest(rec)[:KEY_LENGTH]


def fingerprint(path: str, content: bool = False, signatures: dict[str, str] | None = None) -> str:
    p = Path(path)
    if _is_manifest(path):
        digest = manifest.fingerprint(p, content, signatures)
        return f"content:{digest}" if content else digest
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p] if p.exists() else []
    if not files:
        return "missing"
    return config.digest([[str(f.relative_to(p) if p.is_dir() else f.name), f.stat().st_size,
                           f.stat().st_mtime_ns] for f in files])


def explain(out: Path, rec: dict, inventories: dict[str, dict]) -> str:
    """Why `out` is not an output of `rec`: what changed since the output it replaces.

    That is `out` itself when it is complete (an explicit --out whose config changed), else, for a
    keyed output (named by the key of `rec`), the step's complete output closest to it (store).
    """
    if store.is_complete(out):
        prev = out
    elif out.name == key_of(rec):
        prev = store.closest_complete(out.parent, rec)
    else:
        prev = None
    if prev is None:
        return "never run"
    try:
        old = json.loads((prev / "key.json").read_text())
    except (OSError, ValueError):
        return f"{prev / 'key.json'} is unreadable"
    reasons = diff(old, rec)
    for i, reason in enumerate(reasons):
        if reason.startswith("input "):
            reasons[i] = "; ".join(_input_changes(prev, old, rec, inventories))
    return "; ".join(reasons) or "inputs changed"


def _input_changes(prev: Path, old: dict, new: dict, inventories: dict[str, dict]) -> list[str]:
    """One phrase per changed input; a manifest's says how many of its images came, went or changed."""
    try:
        saved = json.loads((prev / INVENTORY).read_text())
    except (OSError, ValueError):
        saved = {}  # an output from before inventories were kept
    phrases = []
    for name, fp in new["inputs"].items():
        if old.get("inputs", {}).get(name) == fp:
            continue
        if name not in saved or name not in inventories:  # not a manifest, or kept no inventory
            phrases.append(f"input {name} changed")
            continue
        was, now = saved[name]["images"], inventories[name]["images"]
        counts = [(n, verb) for n, verb in ((sum(f not in was for f in now), "added"),
                                            (sum(f not in now for f in was), "removed"),
                                            (sum(f in was and now[f] != was[f] for f in now), "changed")) if n]
        if counts:
            (n, verb), rest = counts[0], counts[1:]
            said = ", ".join([f"{manifest.plural(n, 'image')} {verb}"] + [f"{m} {v}" for m, v in rest])
        elif inventories[name]["manifest_sha256"] != saved[name]["manifest_sha256"]:
            said = "its rows changed, none of its images"
        else:
            said = "fingerprinted another way (data.fingerprint)"
        phrases.append(f"input {name}: {said}")
    return phrases


def diff(old: dict, new: dict) -> list[str]:
    """What differs between two records, one phrase each (e.g. "config optim.lr 0.001 -> 0.002")."""
    reasons = []
    if old.get("version") != new["version"]:
        reasons.append(f"medalign {old.get('version')} -> {new['version']}")
    if old.get("stage") != new["stage"]:
        reasons.append(f"stage {old.get('stage')} -> {new['stage']}")
    before, after = config.flatten(old.get("config", {})), config.flatten(new["config"])
    changed = [f"{k} {before.get(k, '(unset)')} -> {after.get(k, '(unset)')}"
               # a key new to the config (null by default) is a change too: the old record lacks it
               for k in sorted(set(before) | set(after)) if before.get(k, _UNSET) != after.get(k, _UNSET)]
    if changed:
        reasons.append("config " + ", ".join(changed))
    upstream = [n for n, k in new["upstream"].items() if old.get("upstream", {}).get(n) != k]
    if upstream:
        reasons.append("upstream " + ", ".join(upstream) + " changed")
    inputs = [n for n, fp in new["inputs"].items() if old.get("inputs", {}).get(n) != fp]
    if inputs:
        reasons.append("input " + ", ".join(inputs) + " changed")
    return reasons

