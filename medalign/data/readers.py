"""Image decoding: one entry point, `read_image`, returning float32 (C, H, W) in [0, 1].

PNG/JPEG (8 and 16 bit) through Pillow. DICOM and NIfTI readers join here behind the same call.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medalign.errors import DataError


def read_image(path: str | Path, channels: int = 1) -> np.ndarray:
    """Decodes an image to float32 (channels, H, W) scaled to [0, 1] by its bit depth."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            array = _to_array(im)
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {_reason(e)}") from None
    return _to_channels(array, channels, path)


def verify_images(paths: list[Path]) -> None:
    """Opens every image before training starts, and names every unreadable one."""
    bad = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            bad.append(f"{p} ({_reason(e)})")
    if bad:
        raise DataError(f"{len(bad)} unreadable image(s): " + "; ".join(bad))


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


def _to_channels(a: np.ndarray, channels: int, path: Path) -> np.ndarray:
    if a.shape[0] == channels:
        return np.ascontiguousarray(a)
    if channels == 1 and a.shape[0] == 3:  # ITU-R 601 luma, as Pillow's convert("L")
        return np.tensordot(np.array([0.299, 0.587, 0.114], np.float32), a, axes=1)[None]
    if channels == 3 and a.shape[0] == 1:
        return np.repeat(a, 3, axis=0)
    raise DataError(f"image {path} has {a.shape[0]} channels; cannot make {channels}")


def _reason(e: Exception) -> str:
    if isinstance(e, UnidentifiedImageError):
        return "not an image file Pillow can identify"
    return str(e).split("\n")[0] or type(e).__name__
