import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from medalign.data import readers
from medalign.data.manifest import read_manifest
from medalign.data.preprocess_cache import PreprocessCache, prune

SIZE = 16
TOL = 2 / 65535


def _make_data(root: Path) -> Path:
    from pydicom.data import get_testdata_file

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / "b.png")
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)).save(root / "c.png")  # no resize
    shutil.copy(get_testdata_file("CT_small.dcm", download=False), root / "ct.dcm")
    (root / "manifest.csv").write_text("path,label\na.png,x\nb.png,y\nct.dcm,x\nc.png,y\n")
    return root / "manifest.csv"


@pytest.fixture
def data(tmp_path):
    m = read_manifest(_make_data(tmp_path / "data"))
    return m, list(m.rows)


def _expected(manifest, row, channels, size, window=None):
    img = readers.read_image(manifest.image_path(row), channels, None, window).transpose(1, 2, 0)
    if img.shape[:2] != (size, size):
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).reshape(size, size, channels)
    return img


@pytest.mark.parametrize("channels,window", [(1, None), (3, None), (1, "lung")])
def test_values_match_read_image_and_resize(tmp_path, data, channels, window):
    m, rows = data
    cache = PreprocessCache(tmp_path / "cache", m, rows, channels, SIZE, window)
    assert not cache.ready()
    cache.fill()
    assert cache.ready() and len(cache) == 4
    for i, row in enumerate(rows):
        got = cache[i]
        assert got.dtype == np.float32 and got.shape == (SIZE, SIZE, channels)
        np.testing.assert_allclose(got, _expected(m, row, channels, SIZE, window), atol=TOL, rtol=0)
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert files == [f"{cache.key}.json", f"{cache.key}.npy"]


def test_second_cache_is_ready_without_decoding(tmp_path, data, monkeypatch):
    m, rows = data
    PreprocessCache(tmp_path / "cache", m, rows, 1, SIZE).fill()
    calls = []
    real = readers.read_image
    monkeypatch.setattr(readers, "read_image", lambda *a, **k: calls.append(a) or real(*a, **k))
    again = PreprocessCache(tmp_path / "cache", m, rows, 1, SIZE)
    assert again.ready()
    again.fill()
    first = again[0]
    assert calls == []
    np.testing.assert_allclose(first, _expected(m, rows[0], 1, SIZE), atol=TOL, rtol=0)


def test_key_changes_with_image_mtime_size_window_and_rows(tmp_path, data):
    m, rows = data
    base = PreprocessCache(tmp_path / "c", m, rows, 1, SIZE)
    assert PreprocessCache(tmp_path / "c", m, rows, 1, SIZE).key == base.key
    assert PreprocessCache(tmp_path / "c", m, rows, 1, SIZE + 1).key != base.key
    assert PreprocessCache(tmp_path / "c", m, rows, 1, SIZE, "lung").key != base.key
    assert PreprocessCache(tmp_path / "c", m, rows, 1, SIZE, (40, 400)).key != base.key
    assert PreprocessCache(tmp_path / "c", m, rows, 3, SIZE).key != base.key
    assert PreprocessCache(tmp_path / "c", m, rows[:2], 1, SIZE).key != base.key
    sliced = [dict(r, axis="0") for r in rows]  # NIfTI rows along another axis decode other pixels
    assert PreprocessCache(tmp_path / "c", m, sliced, 1, SIZE).key != base.key
    base.fill()
    st = (m.root / "ct.dcm").stat()
    os.utime(m.root / "ct.dcm", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    touched = PreprocessCache(tmp_path / "c", m, rows, 1, SIZE)
    assert touched.key != base.key and not touched.ready()
    touched.fill()
    # old entries stay until pruned
    assert base.path.exists()
    removed = prune(tmp_path / "c", keep={touched.key})
    assert base.path in removed and not base.path.exists() and touched.ready()


def test_failed_fill_leaves_no_entry_and_stale_temps_go(tmp_path, data, monkeypatch):
    m, rows = data
    root = tmp_path / "cache"
    cache = PreprocessCache(root, m, rows, 1, SIZE)
    real = readers.read_image
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed midway")
        return real(*a, **k)

    monkeypatch.setattr(readers, "read_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        cache.fill()
    assert not cache.ready() and list(root.iterdir()) == []
    with pytest.raises(Exception, match="not filled"):
        cache[0]

    monkeypatch.setattr(readers, "read_image", real)
    dead = root / f".tmp-{cache.key}-999999999.npy"  # a fill killed with SIGKILL: pid long gone
    dead.write_bytes(b"partial")
    assert not cache.ready()
    cache.fill()
    assert cache.ready() and not dead.exists()
    assert sorted(p.name for p in root.iterdir()) == [f"{cache.key}.json", f"{cache.key}.npy"]


_FILLER = """
import sys, time
from pathlib import Path
from medalign.data import readers
from medalign.data.manifest import read_manifest
from medalign.data.preprocess_cache import PreprocessCache
real = readers.read_image
def slow(*a, **k):
    time.sleep(0.05)
    return real(*a, **k)
readers.read_image = slow
m = read_manifest(sys.argv[1])
c = PreprocessCache(Path(sys.argv[2]), m, list(m.rows), 1, 16)
go = Path(sys.argv[3])
Path(str(go) + "." + sys.argv[4]).touch()
while not go.exists():
    time.sleep(0.01)
c.fill()
print(c.key)
"""


def test_two_processes_filling_at_once(tmp_path, data):
    m, rows = data
    root = tmp_path / "cache"
    go = tmp_path / "go"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _FILLER, str(m.path), str(root), str(go), str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    deadline = time.monotonic() + 60
    while not all(Path(f"{go}.{i}").exists() for i in range(2)):  # both imported and waiting
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate() for p in procs]
        time.sleep(0.02)
    go.touch()
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    cache = PreprocessCache(root, m, rows, 1, SIZE)
    assert {o[0].strip() for o in outs} == {cache.key}
    assert cache.ready()
    assert sorted(p.name for p in root.iterdir()) == [f"{cache.key}.json", f"{cache.key}.npy"]
    for i, row in enumerate(rows):
        np.testing.assert_allclose(cache[i], _expected(m, row, 1, SIZE), atol=TOL, rtol=0)


def test_memmap_reopened_after_fork_and_dropped_on_pickle(tmp_path, data):
    import pickle

    m, rows = data
    cache = PreprocessCache(tmp_path / "cache", m, rows, 1, SIZE)
    cache.fill()
    a = cache[1]
    clone = pickle.loads(pickle.dumps(cache))
    assert clone._mm is None
    np.testing.assert_array_equal(clone[1], a)
    cache._mm_pid = -1  # as in a forked worker: opens its own
    np.testing.assert_array_equal(cache[1], a)
    assert cache._mm_pid == os.getpid()
