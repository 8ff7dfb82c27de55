"""`medalign cache list|prune`, on entries the preprocessing cache itself wrote under $MEDALIGN_CACHE."""
import os
import time

import pytest

from medalign import cli
from medalign.data.manifest import read_manifest
from medalign.data.preprocess_cache import PreprocessCache, default_root, entries

DAY = 86400


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDALIGN_CACHE", str(tmp_path / "cache"))
    assert default_root() == tmp_path / "cache" / "preprocess"
    return default_root()


def _fill(manifest, size) -> PreprocessCache:
    m = read_manifest(manifest)
    cache = PreprocessCache(default_root(), m, list(m.rows), 1, size)
    cache.fill()
    return cache


def _age(cache: PreprocessCache, days: float) -> None:
    then = time.time() - days * DAY
    for p in (cache.sidecar, cache.path):
        os.utime(p, (then, then))


def _run(argv, capsys) -> list[str]:
    cli.main(argv)
    return capsys.readouterr().out.splitlines()


def test_list_shows_each_entry_and_the_total(demo_set, cache_root, capsys):
    small, big = _fill(demo_set, 16), _fill(demo_set, 24)
    _age(small, 10)
    lines = _run(["cache", "list"], capsys)
    assert lines[0] == f"preprocessing cache {cache_root}: 2 entries"
    rows = {line.split()[0]: line for line in lines[2:4]}
    assert list(rows) == [small.key[:16], big.key[:16]]  # least recently used first
    assert "32  16x16x1" in rows[small.key[:16]] and "(10 days ago)" in rows[small.key[:16]]
    assert "32  24x24x1" in rows[big.key[:16]] and rows[big.key[:16]].endswith("ready")
    total = sum(p.stat().st_size for p in cache_root.iterdir())
    assert lines[-1].startswith(f"total {total / 1024:.1f} KiB; ") and lines[-1].endswith("free there")


def test_list_of_an_empty_or_missing_cache(cache_root, capsys):
    assert _run(["cache", "list"], capsys) == [f"preprocessing cache {cache_root}: 0 entries",
                                               "total 0 B; " + _free(cache_root)]


def _free(root):
    from medalign.errors import free_space
    return f"{free_space(root)} free there"


def test_opening_a_ready_entry_marks_it_used(demo_set, cache_root):
    cache = _fill(demo_set, 16)
    _age(cache, 30)
    again = _fill(demo_set, 16)  # what a stage's dataset does: fill() finds it ready
    assert again.key == cache.key
    assert time.time() - cache.sidecar.stat().st_mtime < 60
    assert entries(cache_root)[0]["last_used"] == cache.sidecar.stat().st_mtime


def test_prune_removes_entries_unused_for_longer_and_says_what_it_freed(demo_set, cache_root, capsys):
    old, fresh = _fill(demo_set, 16), _fill(demo_set, 24)
    _age(old, 10)
    dead_temp = cache_root / f".tmp-{old.key}-999999999.npy"  # a fill killed long ago (no such pid)
    dead_temp.write_bytes(b"x" * 100)
    old_bytes = old.path.stat().st_size + old.sidecar.stat().st_size + 100
    before = sorted(cache_root.iterdir())

    lines = _run(["cache", "prune", "--older-than", "5", "--dry-run"], capsys)
    assert sorted(cache_root.iterdir()) == before  # a dry run removes nothing
    assert len(lines) == 2 and lines[0].startswith(f"would remove {old.key[:16]}  ")
    assert "(10 days ago)" in lines[0] and lines[1].startswith(f"would free {old_bytes / 1024:.1f} KiB")

    lines = _run(["cache", "prune", "--older-than", "5"], capsys)
    assert lines[0].startswith(f"removed {old.key[:16]}  ") and lines[1].startswith(f"freed {old_bytes / 1024:.1f} KiB")
    assert sorted(p.name for p in cache_root.iterdir()) == [fresh.sidecar.name, fresh.path.name]
    assert fresh.ready() and not old.ready()

    lines = _run(["cache", "prune", "--older-than", "5"], capsys)
    assert lines == [f"freed 0 B in {cache_root}; nothing last used more than 5 days ago"]
