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
                    raise _Bad(_page_error(index, n))
                im.seek(index)
            im.load()
            return _to_array(im)
    except UnidentifiedImageError:
        raise _Bad("not an image file Pillow can identify") from None


def verify(path: Path, index: int | None) -> None:
    """PNG: every chunk read and CRC-checked (Pillow's `verify`), no inflating. JPEG: its headers,
    and the end-of-image marker as its last bytes (a marker that entropy-coded data cannot hold, so
    the scan is complete); without it, a decode at 1/8 scale decides (data after the marker is
    allowed). Other formats are decoded. Pillow's `verify` alone reads no JPEG/TIFF data: a
    truncated file would pass it and fail in the middle of training."""
    try:
        with Image.open(path) as im:
            n = getattr(im, "n_frames", 1)
            if index is not None and index >= n:
                raise _Bad(_page_error(index, n))
            if im.format == "PNG":
                im.verify()
                return
            if im.format == "JPEG" and _ends_with_eoi(path):
                return
            if index:
                im.seek(index)
            if im.format == "JPEG":
                im.draft(im.mode, (1, 1))
            im.load()
    except UnidentifiedImageError:
        raise _Bad("not an image file Pillow can identify") from None


def _ends_with_eoi(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-2, 2)
        return f.read(2) == b"\xff\xd9"


def _page_error(index: int, n: int) -> str:
    return f"page index {index} out of range: the file has {n} page{'' if n == 1 else 's'}"


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
