"""The per-key lock: waits for its holder, names it on timeout, takes over a dead holder's stale lock."""
import fcntl
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from medalign.errors import LockTimeout
from medalign.pipeline import lock


def hold_foreign(path, heartbeat_age: float, interval: float = 1.0) -> int:
    """An fd holding `path` the way another node's lingering lock would: fcntl held, JSON with its heartbeat."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    now = time.time()
    os.write(fd, json.dumps({"host": "node7", "pid": 4242, "started": now - 3600, "heartbeat": now - heartbeat_age,
                             "heartbeat_s": interval}).encode())
    return fd


def test_second_process_waits_while_the_first_holds_it(tmp_path):
    path = tmp_path / ".lock-x"
    waiter = textwrap.dedent(f"""
        from medalign.pipeline import lock
        with lock.acquire(__import__("pathlib").Path({str(path)!r}), "x",
                          on_wait=lambda h: print("waiting for", h.pid, flush=True)):
            print("got it", flush=True)
    """)
    with lock.acquire(path, "x"):
        proc = subprocess.Popen([sys.executable, "-c", waiter], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == f"waiting for {os.getpid()}\n"
        time.sleep(0.5)
        assert proc.poll() is None  # still waiting
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out == "got it\n"
    assert not path.exists()


def test_timeout_names_the_holder(tmp_path):
    path = tmp_path / ".lock-x"
    with lock.acquire(path, "x"):
        start = time.monotonic()
        with pytest.raises(LockTimeout) as e:
            lock.acquire(path, "runs/q/pretrain/ab12", timeout=0.5)
        assert 0.5 <= time.monotonic() - start < 2
    message = str(e.value)
    assert message.startswith(f"runs/q/pretrain/ab12: locked by pid {os.getpid()} on host {socket.gethostname()} since ")
    assert message.endswith("s ago); gave up after 0.5 s (--lock-timeout)") and "\n" not in message
    assert e.value.exit_code == 3


def test_stale_heartbeat_lock_is_taken_over(tmp_path):
    path = tmp_path / ".lock-x"
    dead = hold_foreign(path, heartbeat_age=10.0, interval=1.0)  # 10 missed beats: the node is gone
    try:
        with lock.acquire(path, "x", timeout=5) as held:
            info = json.loads(path.read_text())
            assert info["pid"] == os.getpid() and time.time() - info["heartbeat"] < 5
            assert os.stat(path).st_ino != os.fstat(dead).st_ino and held.path == path
    finally:
        os.close(dead)


def test_fresh_heartbeat_lock_is_waited_for(tmp_path):
    path = tmp_path / ".lock-x"
    alive = hold_foreign(path, heartbeat_age=1.0, interval=1.0)
    try:
        with pytest.raises(LockTimeout, match="locked by pid 4242 on host node7"):
            lock.acquire(path, "x", timeout=0.5)
        assert lock.holder(path).pid == 4242
    finally:
        os.close(alive)


def test_holder_is_none_unless_held_with_a_live_heartbeat(tmp_path):
    path = tmp_path / ".lock-x"
    assert lock.holder(path) is None
    fd = hold_foreign(path, heartbeat_age=100.0)
    assert lock.holder(path) is None  # held, but its holder stopped beating long ago
    os.close(fd)
    assert path.exists() and lock.holder(path) is None  # a crashed holder's file, fcntl lock gone
    with lock.acquire(path, "x"):  # and such a file is taken at once, without waiting for its heartbeat
        assert lock.holder(path).pid == os.getpid()


def test_heartbeat_is_refreshed(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDALIGN_LOCK_HEARTBEAT_S", "0.05")
    path = tmp_path / ".lock-x"
    with lock.acquire(path, "x"):
        first = json.loads(path.read_text())
        time.sleep(0.3)
        later = json.loads(path.read_text())
    assert later["started"] == first["started"] and later["heartbeat"] > first["heartbeat"]
    assert first["heartbeat_s"] == 0.05


def test_released_on_exception(tmp_path):
    path = tmp_path / ".lock-x"
    with pytest.raises(RuntimeError):
        with lock.acquire(path, "x"):
            raise RuntimeError("stage failed")
    assert not path.exists()
    lock.acquire(path, "x", timeout=0).release()


def test_a_lock_on_a_file_that_was_replaced_meanwhile_is_retried(tmp_path, monkeypatch):
    """Between our open and our flock the holder released (unlinking the file) and a third run made a new one."""
    path = tmp_path / ".lock-x"
    real, calls = fcntl.flock, []

    def flock(fd, op):
        if not calls and op & fcntl.LOCK_EX:
            path.unlink()
            path.write_text("")
        calls.append(op)
        return real(fd, op)

    monkeypatch.setattr(lock.fcntl, "flock", flock)
    with lock.acquire(path, "x", timeout=1):
        assert len(calls) == 2 and json.loads(path.read_text())["pid"] == os.getpid()
