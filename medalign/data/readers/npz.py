"""`.npz` holding exactly one image array (N, H, W) or (N, H, W, C) / (N, C, H, W): `index` = row."""
from __future__ import annotations

import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from medalign.data.readers._errors import _Bad
from medalign.data.readers._scaling import _minmax


def _npz_image_key(path: Path) -> tuple[str, tuple[int, ...]]:
    """The one image array (ndim 3 or 4) in an npz, read from the .npy headers only."""
    shapes = {}
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if not name.endswith(".npy"):
                continue
            with z.open(name) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, _ = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, _, _ = np.lib.format.read_array_header_2_0(f)
            shapes[name[: -len(".npy")]] = tuple(shape)
    images = [k for k, s in shapes.items() if len(s) in (3, 4)]
    if len(images) != 1:
        listing = ", ".join(f"{k} {s}" for k, s in shapes.items()) or "none"
        raise _Bad(
            f"needs exactly one image array (ndim 3 or 4), found {len(images)}; keys: {listing}"
        )
    return images[0], shapes[images[0]]


@lru_cache(maxsize=1)
def _npz_array(path: str, key: str, mtime_ns: int, size: int) -> np.ndarray:
    # Reading row after row of one npz would otherwise decompress the whole array every time.
    with np.load(path, allow_pickle=False) as z:
        return z[key]


def _npz_row(shape: tuple[int, ...], index: int | None) -> int:
    n = shape[0]
    k = 0 if index is None else index
    if k >= n:
        raise _Bad(f"row index {k} out of range: the array has {n} row{'' if n == 1 else 's'}")
    return k


def _npz_layout(shape: tuple[int, ...]) -> str:
    if len(shape) == 3:
        return "gray"
    if shape[-1] in (1, 3):
        return "last"
    if shape[1] in (1, 3):
        return "first"
    raise _Bad(
        f"cannot tell the channel axis of an array of shape {shape} (want N,H,W,C or N,C,H,W with C 1 or 3)"
    )


def read(path: Path, index: int | None, window) -> np.ndarray:
    key, shape = _npz_image_key(path)
    layout = _npz_layout(shape)
    k = _npz_row(shape, index)
    st = path.stat()
    a = _npz_array(str(path.resolve()), key, st.st_mtime_ns, st.st_size)[k]
    a = a[None] if layout == "gray" else (a.transpose(2, 0, 1) if layout == "last" else a)
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    if a.dtype == np.bool_:
        return a.astype(np.float64)
    if a.dtype == np.uint16:
        return a.astype(np.float64) / 65535.0
    a = a.astype(np.float64)
    if a.dtype.kind == "f" and np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0:
        return a  # floats already in [0, 1] are kept as they are
    return _minmax(a)


def verify(path: Path, index: int | None) -> None:
    key, shape = _npz_image_key(path)
    _npz_layout(shape)
    _npz_row(shape, index)
