"""Garbage in a work directory: stage outputs that no given pipeline and no recent run still names.

A nightly job makes a new pretrain output whenever the archive grows, and every output after it;
the old ones stay (a rerun of last week's inputs is then free) until `medalign gc` removes them.
Kept: every output (and interrupted run) the given pipelines plan today, and every output a
history record from the last `keep_days` names. Only folders that are medalign outputs are
considered (a key.json inside, or an in-progress folder of a key); an in-progress folder whose lock
is held belongs to a live run and is never touched.
"""
from __future__ import annotations

import datetime
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from medalign.pipeline import history, lock, store
from medalign.pipeline.runner import plan
from medalign.pipeline.spec import Pipeline


@dataclass
class Garbage:
    path: Path
    bytes: int
    what: str  # output, interrupted (a run's in-progress folder) or leftover (of a crash mid-rename)


def find(workdir: Path, pipelines: list[Pipeline], keep_days: float) -> list[Garbage]:
    keep = {p.out.resolve() for pipeline in pipelines for p in plan(pipeline)}
    since = time.time() - keep_days * 86400
    for rec in history.read(workdir):
        if _seconds(rec.get("start")) >= since:
            keep.update(Path(s["out"]).resolve() for s in rec.get("steps", []))
    found = []
    for step_dir in sorted(d for d in Path(workdir).iterdir() if d.is_dir() and not d.name.startswith(".")):
        for d in sorted(step_dir.iterdir()):
            if not d.is_dir():
                continue
            if d.name.startswith(".partial-"):
                out = step_dir / d.name.removeprefix(".partial-")
                if out.resolve() in keep or lock.holder(store.lock_path(out)):
                    continue
                found.append(Garbage(d, _size(d), "interrupted"))
            elif d.name.startswith(".old-"):  # an output a crash left half replaced
                found.append(Garbage(d, _size(d), "leftover"))
            elif not d.name.startswith(".") and (d / "key.json").is_file() and d.resolve() not in keep:
                found.append(Garbage(d, _size(d), "output"))
    return found


def remove(garbage: list[Garbage]) -> None:
    for g in garbage:
        shutil.rmtree(g.path)
        out = g.path.parent / g.path.name.removeprefix(".partial-")
        lock_file = store.lock_path(out)
        if lock_file.exists() and not lock.holder(lock_file):
            lock_file.unlink(missing_ok=True)


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def _seconds(stamp: str | None) -> float:
    try:
        return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except (TypeError, ValueError):
        return 0.0  # unreadable: not recent
