"""Errors a user can act on: the CLI prints them as one line and exits non-zero, no traceback.

Exit codes (docs/scheduling.md): 0 done; 1 a stage failed; 2 bad config or input; 3 lock timeout;
4 drift detected (`medalign drift`); 75 preempted, resumable.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path


class MedalignError(Exception):
    """Bad input the user can fix; the message names the thing that is wrong."""

    exit_code = 1


class ConfigError(MedalignError):
    exit_code = 2


class DataError(MedalignError):
    """A manifest or image that cannot be used as it is."""

    exit_code = 2  # bad input, as a bad config is: rerunning will not help, fixing the input will


class CheckpointError(MedalignError):
    """A weights file that does not fit the model it is loaded into."""

    exit_code = 2


def one_line(e: BaseException) -> str:
    """An exception's message on one line: pydicom, for one, spreads its plugin list over many."""
    if type(e).__name__ == "UnidentifiedImageError":  # Pillow's, named without importing Pillow here
        return "not an image file Pillow can identify"
    text = ""
    for line in (line.strip() for line in str(e).splitlines()):
        if line:
            text += line if not text else (" " if text.endswith(":") else "; ") + line
    return text or type(e).__name__


class LockTimeout(MedalignError):
    """Another run holds the lock on a step's output for longer than --lock-timeout."""

    exit_code = 3


class Preempted(MedalignError):
    """SIGTERM or SIGUSR1 (SLURM before a time limit): resume state is written; rerun to continue."""

    exit_code = 75  # EX_TEMPFAIL from sysexits.h: "try again later", what a requeue script checks for


class WriteFailed(MedalignError):
    """A write that failed (full disk, quota, I/O error). Exit 1, a stage failed: what was written
    before it (the previous checkpoint, earlier outputs) is left as it was, so a rerun continues."""


RERUN = "the previous checkpoint and earlier results are intact; free some space and run the same command again"


@contextlib.contextmanager
def writing(path, then: str = RERUN):
    """Turns an OS-level failure while writing `path` into one WriteFailed line: the path, the
    errno text and the space left on that filesystem. Other exceptions pass as they are (a bug
    keeps its traceback)."""
    try:
        yield
    except MedalignError:  # already one line (an inner `writing`): its OSError cause must not be wrapped twice
        raise
    except Exception as e:
        reason = _os_reason(e)
        if reason is None:
            raise
        where = Path(getattr(e, "filename", None) or path)
        raise WriteFailed(f"cannot write {where}: {reason} ({free_space(where)} free there); {then}") from e


def _os_reason(e: BaseException) -> str | None:
    """The errno text of an OSError behind `e`: torch.save wraps it in a RuntimeError (as its
    __context__), safetensors' Rust writer only says 'os error 28' in its message."""
    seen = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return seen.strerror or os.strerror(seen.errno)
        seen = seen.__cause__ or seen.__context__
    found = re.search(r"os error (\d+)", str(e))
    return os.strerror(int(found.group(1))) if found else None


def free_space(path) -> str:
    """Free space on the filesystem holding `path` (its nearest existing parent), in binary units."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return human(shutil.disk_usage(p).free)
    except OSError:
        return "unknown space"


def human(n: float) -> str:
    """Bytes in binary units: 0 B, 196.0 KiB, 51.8 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
