"""Content hashes of image files, remembered by (path, size, mtime, ctime) so that a file is read once.

`fingerprint: content` hashes every image a manifest lists. Over a large archive that is hours of
reading, so each hash is stored in $MEDALIGN_CACHE/hashes.sqlite (default ~/.cache/medalign) and
reused while the file's size, mtime and ctime are unchanged. ctime as well as mtime: an edit can put
the old mtime back (os.utime, `touch -d`, a copy tool) but every write moves ctime, so an edit that
keeps size and mtime still gets its bytes read. A copy that resets times costs one re-read, after
which the hash (and so every cache key) is what it was.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from medalign.cachedir import cache_home
from medalign.data.manifest import file_sha256


def db_path() -> Path:
    return cache_home() / "hashes.sqlite"


def content_hashes(files: list[Path]) -> dict[Path, str]:
    """{file: sha256}, reading only the files the store does not know as they are now."""
    db = db_path()
    db.parent.mkdir(parents=True, exist_ok=True)
    # sqlite, not a JSON file: concurrent runs (cron and a user at once) update it without losing entries
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con, con:
        con.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
                    "ctime_ns INTEGER, sha256 TEXT)")
        known = {}
        for chunk in _chunks([str(Path(f).resolve()) for f in files], 500):
            marks = ",".join("?" * len(chunk))
            rows = con.execute("SELECT path, size, mtime_ns, ctime_ns, sha256 FROM files "
                               f"WHERE path IN ({marks})", chunk)
            known.update({row[0]: row[1:] for row in rows})
        out, fresh = {}, []
        for f in files:
            key, st = str(Path(f).resolve()), os.stat(f)
            now = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            hit = known.get(key)
            if hit and tuple(hit[:3]) == now:
                out[f] = hit[3]
            else:
                out[f] = file_sha256(Path(f))
                fresh.append((key, *now, out[f]))
        con.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)", fresh)
    return out


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):  # sqlite caps the number of ? in one statement
        yield items[i:i + n]
