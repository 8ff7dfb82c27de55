"""PNG/JPEG/TIFF/BMP/... (8 and 16 bit) through Pillow; `index` picks a page of a multi-page TIFF."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medalign.data.readers._errors import _Bad


def read(path: Path, index: int | None, window) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if index:
                n = getattr(im, "n_frames", 1)
                if index >= n:
                    raise _Bad(f"page index {index} out of range: the file has {n} page(s)")
                im.seek(index)
            im.load()
            return _to_array(im)
    except UnidentifiedImageError:
        raise _Bad("not an image file Pillow can identify") from None


def verify(path: Path, index: int | None) -> None:
    try:
        with Image.open(path) as im:
            n = getattr(im, "n_frames", 1)
            if index is not None and index >= n:
                raise _Bad(f"page index {index} out of range: the file has {n} page(s)")
            im.verify()
    except UnidentifiedImageError:
        raise _Bad("not an image file Pillow can identify") from None


def _to_array(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(im, dtype=np.float32)[None] / 65535.0
    if im.mode == "I":  # 32-bit ints: Pillow's mode for most 16-bit PNGs; scale by the 16-bit range
        return np.clip(np.asarray(im, dtype=np.float32), 0, 65535)[None] / 65535.0
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        return ((a - lo) / (hi - lo if hi > lo else 1.0))[None]
    if im.mode not in ("L", "RGB"):
        im = im.convert("RGB" if "A" in im.mode or im.mode in ("P", "CMYK", "YCbCr") else "L")
    a = np.asarray(im, dtype=np.float32) / 255.0
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
