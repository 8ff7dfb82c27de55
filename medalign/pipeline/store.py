"""Stage output folders: written under a temporary name, COMPLETE last, then renamed into place.

A folder without COMPLETE never counts as output, so a crash leaves nothing half-written behind a
valid name; its temporary folder is removed by the next run of the same key.
"""
from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

COMPLETE = "COMPLETE"


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE).is_file()


def latest_complete(step_dir: Path) -> Path | None:
    done = [d for d in step_dir.glob("*") if not d.name.startswith(".") and is_complete(d)] if step_dir.is_dir() else []
    return max(done, key=lambda d: (d / COMPLETE).stat().st_mtime_ns, default=None)


@contextmanager
def staged(final: Path):
    """Yields a temporary folder that becomes `final` only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".tmp-{final.name}-*"):
        if not _alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        (tmp / COMPLETE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
        if final.exists():  # replacing an old output: move it aside first, so `final` is never half there
            old = final.parent / f".old-{final.name}-{os.getpid()}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
