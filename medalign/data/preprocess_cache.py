"""A preprocessing cache: every image of a row list decoded once, resized, in one .npy memmap.

A second epoch, or a second stage over the same manifest, then reads a slice of one array instead of
decoding a DICOM (or PNG/NIfTI) again. What comes out of ``cache[i]`` is what
``read_image(path, channels, index, window, percentiles, axis)`` resized to ``size x size`` (cv2
``INTER_AREA``) and transposed to (H, W, C) would give, up to the quantisation below; augmentations
run after it.

On disk, in `root`::

    <key>.npy    uint16 (N, size, size, C), HWC so albumentations takes a row as it is
    <key>.json   sidecar: key, shape, dtype, rows, created, config, format version

`key` is the digest (`medalign.config.digest`) of the manifest fingerprint
(`medalign.data.manifest.fingerprint`: manifest bytes + every image's path, size and mtime), the
rows' (path, index, axis) list, channels, size, window, percentiles and `FORMAT_VERSION`. Any change
to those gives a new key, so a stale entry is never read. Old entries are left where they are
(another stage may still use them); `prune(root, keep)` removes those not listed, and
`medalign cache prune --older-than DAYS` those no stage opened for that long (`fill` touches the
sidecar of a ready entry it opens, so its mtime is the entry's last use).

Why uint16: half the bytes of float32 (a 224 px grayscale image is 98 KiB, 10k images 1 GiB), the
rounding error is at most 0.5/65535 = 1/131070 (far below any augmentation's noise, and below one
step of an 8-bit image), and a 16-bit DICOM's full precision survives (12-16 bits stored).

Writing is crash- and race-safe, as `medalign.pipeline.store`: the array is written to
``.tmp-<key>-<pid>.npy``, fsynced and ``os.replace``d to ``<key>.npy``; the sidecar follows the same
way and is renamed last, and `ready()` requires it. Two processes filling at once write identical
bytes to their own temp files, and the last rename wins; a reader that already opened the memmap
keeps the inode it opened. A fill that raises removes its temp file; one that was killed leaves a
temp file that the next fill removes (its pid is dead). The array's blocks are allocated before
it is filled, so a full disk is a one-line WriteFailed and no temp stays, never a SIGBUS.

The memmap is opened lazily, once per process: DataLoader workers forked after the parent opened it
open their own, and pickling (spawn) drops it.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from medalign.cachedir import cache_home
from medalign.config import digest
from medalign.data import readers
from medalign.data.manifest import Manifest, fingerprint, frame_index, slice_axis
from medalign.errors import DataError, writing

FORMAT_VERSION = 1
_THEN = "nothing else was changed; free some space (medalign cache prune) and run the same command again"
_SCALE = 65535.0


class PreprocessCache:
    """Decoded, normalised, resized images in one memory-mapped array on disk."""

    def __init__(self, root: Path, manifest: Manifest, rows: list[dict], channels: int, size: int,
                 window=None, percentiles=None):
        if not rows:
            raise ValueError("PreprocessCache: no rows")
        if int(size) < 1 or int(channels) < 1:
            raise ValueError(f"PreprocessCache: size and channels must be >= 1, got {size}, {channels}")
        self.root = Path(root)
        self.manifest, self.rows = manifest, list(rows)
        self.channels, self.size, self.window = int(channels), int(size), window
        self.percentiles = list(percentiles) if percentiles is not None else None
        self._entries = [(r["path"], frame_index(manifest, r), slice_axis(manifest, r)) for r in self.rows]
        self.key = digest({
            "version": FORMAT_VERSION,
            "manifest": fingerprint(manifest.path),
            "rows": [list(e) for e in self._entries],
            "channels": self.channels,
            "size": self.size,
            "window": list(window) if isinstance(window, (tuple, list)) else window,
            "percentiles": self.percentiles,
        })
        self.shape = (len(self.rows), self.size, self.size, self.channels)
        self._mm: np.ndarray | None = None
        self._mm_pid: int | None = None

    # ------------------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.root / f"{self.key}.npy"

    @property
    def sidecar(self) -> Path:
        return self.root / f"{self.key}.json"

    def ready(self) -> bool:
        """True only when a complete entry for this key is in place (sidecar written last)."""
        try:
            meta = json.loads(self.sidecar.read_text())
        except (OSError, ValueError):
            return False
        return (meta.get("key") == self.key and tuple(meta.get("shape", ())) == self.shape
                and meta.get("dtype") == "uint16" and self.path.is_file())

    def fill(self, progress: bool = False) -> None:
        """Decodes every row once and publishes the entry; when it is ready already, only marks it used."""
        if self.ready():
            with contextlib.suppress(OSError):  # a read-only shared cache is still usable
                os.utime(self.sidecar)  # the sidecar's mtime is "last used" for `medalign cache prune`
            return
        with writing(self.root, _THEN):
            self.root.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(self.root, self.key)
        pid = os.getpid()
        tmp_npy = self.root / f".tmp-{self.key}-{pid}.npy"
        tmp_json = self.root / f".tmp-{self.key}-{pid}.json"
        n = len(self.rows)
        t0 = time.perf_counter()
        try:
            with writing(tmp_npy, _THEN):
                out = np.lib.format.open_memmap(tmp_npy, mode="w+", dtype=np.uint16, shape=self.shape)
                _reserve(tmp_npy)
            step = max(1, n // 10)
            for i, (rel, index, axis) in enumerate(self._entries):
                out[i] = quantise(self._decode(self.manifest.root / rel, index, axis))
                if progress and ((i + 1) % step == 0 or i + 1 == n):
                    print(f"preprocess cache {self.key[:12]}: {i + 1}/{n} images, "
                          f"{time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
            with writing(tmp_npy, _THEN):
                out.flush()
                del out
                _fsync(tmp_npy)
            meta = {"key": self.key, "shape": list(self.shape), "dtype": "uint16", "rows": n,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "format_version": FORMAT_VERSION,
                    "manifest": str(self.manifest.path), "channels": self.channels, "size": self.size,
                    "window": list(self.window) if isinstance(self.window, (tuple, list)) else self.window}
            with writing(tmp_json, _THEN):
                tmp_json.write_text(json.dumps(meta, indent=1) + "\n")
                _fsync(tmp_json)
            os.replace(tmp_npy, self.path)
            os.replace(tmp_json, self.sidecar)  # last: from here on the entry is ready
        except BaseException:
            for p in (tmp_npy, tmp_json):
                p.unlink(missing_ok=True)
            raise
        self._mm = None  # a memmap of an older file (if any) is not this one

    def _decode(self, path: Path, index: int | None, axis: int | None) -> np.ndarray:
        image = readers.read_image(path, self.channels, index, self.window, self.percentiles, axis)
        return resize_hwc(image.transpose(1, 2, 0), self.size)

    # ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:
        """Float32 (size, size, C) in [0, 1]."""
        mm = self._array()
        return np.multiply(mm[i], np.float32(1.0 / _SCALE), dtype=np.float32)

    def _array(self) -> np.ndarray:
        if self._mm is None or self._mm_pid != os.getpid():
            if not self.ready():
                raise DataError(f"preprocess cache {self.path} is not filled; call fill() first")
            mm = np.load(self.path, mmap_mode="r")
            if mm.shape != self.shape or mm.dtype != np.uint16:
                raise DataError(f"preprocess cache {self.path}: shape {mm.shape} {mm.dtype}, "
                                f"expected {self.shape} uint16")
            self._mm, self._mm_pid = mm, os.getpid()
        return self._mm

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_mm"] = state["_mm_pid"] = None
        return state


# ----------------------------------------------------------------------------------------------


def resize_hwc(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) float32 to (size, size, C) with cv2 INTER_AREA (cv2 drops a single channel axis)."""
    import cv2

    if image.shape[:2] == (size, size):
        return np.ascontiguousarray(image, dtype=np.float32)
    c = image.shape[2]
    out = cv2.resize(np.ascontiguousarray(image, dtype=np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return out.reshape(size, size, c)


def quantise(image: np.ndarray) -> np.ndarray:
    """[0, 1] float to uint16 (value * 65535, rounded); NaN becomes 0."""
    x = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0)
    return np.rint(np.clip(x, 0.0, 1.0) * _SCALE).astype(np.uint16)


def default_root() -> Path:
    """$MEDALIGN_CACHE/preprocess, by default ~/.cache/medalign/preprocess."""
    return cache_home() / "preprocess"


def entries(root: Path) -> list[dict]:
    """What `root` holds, oldest use first: one dict per key with its files (path: bytes), bytes,
    images, image size, last use (the sidecar's mtime, touched by `fill` whenever a stage opens the
    entry) and state: ready, incomplete (an array without its sidecar, or a dead fill's temp) or filling."""
    root = Path(root)
    found: dict[str, dict] = {}
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if p.name.startswith(".tmp-"):
            key, _, pid = p.name[len(".tmp-"):].split(".")[0].rpartition("-")
            state = "filling" if _alive(pid) else "incomplete"
        elif p.suffix in (".npy", ".json") and not p.name.startswith("."):
            key, state = p.stem, None
        else:
            continue
        e = found.setdefault(key, {"key": key, "files": {}, "bytes": 0, "images": None, "image_size": None,
                                   "last_used": 0.0, "state": "incomplete"})
        st = p.stat()
        e["files"][p] = st.st_size
        e["bytes"] += st.st_size
        if p.name == f"{key}.json":
            e["last_used"] = st.st_mtime  # the sidecar's time wins: it is the one `fill` touches
            try:
                meta = json.loads(p.read_text())
                n, h, w, c = meta["shape"]
                e["images"], e["image_size"] = n, f"{h}x{w}x{c}"
                e["state"] = "ready" if (root / f"{key}.npy").is_file() else "incomplete"
            except (OSError, ValueError, KeyError, TypeError):
                pass
        else:
            if not (root / f"{key}.json").is_file():
                e["last_used"] = max(e["last_used"], st.st_mtime)
            if state == "filling":
                e["state"] = state
    return sorted(found.values(), key=lambda e: e["last_used"])


def prune(root: Path, keep: set[str], dry_run: bool = False) -> list[Path]:
    """Removes entries (and dead temp files) in `root` whose key is not in `keep`; returns them.
    `dry_run`: only returns what it would remove.

    The sidecar goes first, so an entry stops being ready before its array disappears. A process
    that still has a removed array memory-mapped keeps reading it (POSIX unlink semantics).
    """
    root = Path(root)
    removed: list[Path] = []
    if not root.is_dir():
        return removed

    def remove(p: Path) -> None:
        if not dry_run:
            p.unlink(missing_ok=True)
        removed.append(p)

    for side in root.glob("*.json"):
        if side.name.startswith(".") or side.stem in keep:
            continue
        for p in (side, side.with_suffix(".npy")):
            if p.exists():
                remove(p)
    for npy in root.glob("*.npy"):  # arrays whose sidecar never came
        if not npy.name.startswith(".") and npy.stem not in keep and npy not in removed:
            remove(npy)
    for tmp in root.glob(".tmp-*"):
        key, _, pid = tmp.name[len(".tmp-"):].split(".")[0].rpartition("-")
        if key not in keep and not _alive(pid):
            remove(tmp)
    return removed


def _reserve(path: Path) -> None:
    """Allocates the memmap's blocks now: on a full disk this fails with ENOSPC, where writing into a
    sparse memmap's page the filesystem cannot store would kill the process with SIGBUS."""
    if hasattr(os, "posix_fallocate"):  # Linux, the BSDs; elsewhere the memmap stays sparse
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # filesystems without it: stay sparse
                raise
        finally:
            os.close(fd)


def _remove_stale_temps(root: Path, key: str) -> None:
    for tmp in root.glob(f".tmp-{key}-*"):
        pid = tmp.name[len(f".tmp-{key}-"):].split(".")[0]
        if not _alive(pid):
            tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True
