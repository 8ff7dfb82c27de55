"""A per-key lock that waits for its holder: fcntl on a lock file whose JSON names the holder.

The file says who holds it (host, pid, start) and when the holder last showed it is alive (a
heartbeat a background thread refreshes every MEDALIGN_LOCK_HEARTBEAT_S seconds). On one machine
the kernel drops a dead process's lock at once. On a shared filesystem a dead node's lock can
linger on the server, so a waiter that finds the heartbeat STALE_BEATS intervals old unlinks the
file and locks a fresh one. A local pid check would say nothing about a process on another node.

Every acquire checks, after locking, that the path still names the file it locked: a release or a
takeover unlinks the file, and whoever locked the unlinked file must start over on the new one.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from medalign.errors import ConfigError, LockTimeout

STALE_BEATS = 4  # missed heartbeats (a slow filesystem, a paused VM) before a holder counts as dead
POLL_S = 0.2


def heartbeat_s() -> float:
    value = os.environ.get("MEDALIGN_LOCK_HEARTBEAT_S", "30")
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ConfigError(f"MEDALIGN_LOCK_HEARTBEAT_S={value!r}: expected a number of seconds above 0")
    return seconds


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: float
    heartbeat: float
    heartbeat_s: float  # the holder's own interval: waiters may have another MEDALIGN_LOCK_HEARTBEAT_S

    @property
    def since(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started))

    def age(self) -> float:
        return time.time() - self.heartbeat

    def stale(self) -> bool:
        return self.age() > STALE_BEATS * self.heartbeat_s


class Lock:
    """A held lock; leaving the `with` block (or `release`) lets the next waiter in."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd
        self._started = time.time()
        self._interval = heartbeat_s()
        self._stop = threading.Event()
        self._beat()
        self._thread = threading.Thread(target=self._beats, name=f"heartbeat {path.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        data = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": self._started,
                           "heartbeat": time.time(), "heartbeat_s": self._interval}).encode()
        # write, then cut: a reader never sees an empty file, at worst one that does not parse
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))
        os.fsync(self._fd)  # on NFS, waiters on other nodes see the heartbeat only once the server has it

    def _beats(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._beat()
            except OSError:  # a filesystem hiccup: the next beat tries again
                pass

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        if _same_file(self._fd, self.path):  # not if a waiter took the lock over after all
            self.path.unlink()
        os.close(self._fd)

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(path: Path, label: str, timeout: float | None = None,
            on_wait: Callable[[Holder | None], None] | None = None) -> Lock:
    """Locks `path`, waiting up to `timeout` seconds (None: for ever); `on_wait` hears once who holds it."""
    start = time.monotonic()
    told = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            if _stale(fd, holder) and _same_file(fd, path):
                # a dead holder's lingering lock; between this check and the unlink only another
                # waiter could act, and it would judge the same file just as stale
                path.unlink(missing_ok=True)
                os.close(fd)
                continue
            os.close(fd)
            waited = time.monotonic() - start
            if timeout is not None and waited >= timeout:
                raise LockTimeout(f"{label}: locked by {describe(holder)}; gave up after {timeout:g} s (--lock-timeout)")
            if on_wait and not told:
                on_wait(holder)
                told = True
            time.sleep(POLL_S if timeout is None else min(POLL_S, timeout - waited))
            continue
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            return Lock(path, fd)
        os.close(fd)  # released or taken over between our open and our lock: lock the file there now


def holder(path: Path) -> Holder | None:
    """Who holds the lock now: None if nobody does, or if the holder's heartbeat has gone stale."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # succeeds only if no one holds it
        return None
    except BlockingIOError:
        h = _read(fd)
        return h if h and not h.stale() else None
    finally:
        os.close(fd)


def describe(h: Holder | None) -> str:
    if h is None:
        return "another run (it has not written its name yet)"
    return f"pid {h.pid} on host {h.host} since {h.since} (heartbeat {h.age():.0f} s ago)"


def _read(fd: int) -> Holder | None:
    try:
        d = json.loads(os.pread(fd, 1 << 16, 0))
        return Holder(str(d["host"]), int(d["pid"]), float(d["started"]), float(d["heartbeat"]),
                      float(d["heartbeat_s"]))
    except (ValueError, KeyError, TypeError):
        return None


def _stale(fd: int, h: Holder | None) -> bool:
    if h is not None:
        return h.stale()
    # a holder that died between creating the file and naming itself: judge by the file's age
    return time.time() - os.fstat(fd).st_mtime > STALE_BEATS * heartbeat_s()


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
