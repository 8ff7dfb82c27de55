"""Stage output folders: built in an in-progress folder, COMPLETE last, then renamed into place.

For an output folder P the in-progress folder is P.parent/.partial-P.name and the lock file
P.parent/.lock-P.name; both are named by the output (for keyed outputs, by the key), never by a
process. A folder without COMPLETE never counts as output. An in-progress folder is kept when a run
fails or is preempted: the stage's resume state (`resume/`) is in it and the next run adopts it.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from medalign import config
from medalign.errors import writing

COMPLETE = "COMPLETE"
_UNSET = object()


def partial_dir(out: Path) -> Path:
    return out.parent / f".partial-{out.name}"


def lock_path(out: Path) -> Path:
    return out.parent / f".lock-{out.name}"


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE).is_file()


def cached(out: Path, record: dict) -> dict | None:
    """The metrics of `out` if it is a complete output of exactly `record`."""
    try:
        if is_complete(out) and json.loads((out / "key.json").read_text()) == record:
            return json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):  # a damaged output is recomputed, not trusted
        pass
    return None


def closest_complete(step_dir: Path, record: dict) -> Path | None:
    """The complete output in `step_dir` whose record differs from `record` in the fewest config
    values, the newest of those: for a sweep, the same run's last output rather than another seed's."""
    done = [d for d in step_dir.glob("*") if not d.name.startswith(".") and is_complete(d)] if step_dir.is_dir() else []
    wanted = config.flatten(record["config"])

    def distance(d: Path) -> int:
        try:
            old = config.flatten(json.loads((d / "key.json").read_text()).get("config", {}))
        except (OSError, ValueError):
            return len(wanted) + 1  # unreadable: the last resort
        return sum(old.get(k, _UNSET) != wanted.get(k, _UNSET) for k in old.keys() | wanted.keys())

    return min(done, key=lambda d: (distance(d), -(d / COMPLETE).stat().st_mtime_ns), default=None)


def progress(partial: Path) -> tuple[int, int] | None:
    """(step, total_steps) an interrupted run's last checkpoint reached, from resume/progress.json."""
    try:
        p = json.loads((partial / "resume" / "progress.json").read_text())
        return int(p["step"]), int(p["total_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def publish(partial: Path, out: Path, metrics: dict) -> None:
    """metrics.json, then COMPLETE, then the rename that makes `partial` the output `out`.

    A write that fails (full disk) is a WriteFailed naming the file; `out` and every other output
    are untouched, and the half-written files go so `partial` never holds a COMPLETE of nothing."""
    then = f"{out} and earlier results are intact; free some space and run the same command again"
    try:
        for name, text in (("metrics.json", json.dumps(metrics, indent=2)),
                           (COMPLETE, time.strftime("%Y-%m-%dT%H:%M:%S%z"))):
            with writing(partial / name, then):
                (partial / name).write_text(text + "\n")
    except BaseException:
        for name in (COMPLETE, "metrics.json"):
            (partial / name).unlink(missing_ok=True)
        raise
    if out.exists():  # replacing an old output: move it aside first, so `out` is never half there
        old = out.parent / f".old-{out.name}-{os.getpid()}"
        out.rename(old)
        partial.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        partial.rename(out)
