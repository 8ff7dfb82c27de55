"""Intensity scaling shared by several formats: a (centre, width) window, min-max and percentile
clipping to [0, 1]."""
from __future__ import annotations

import numpy as np


def _apply_window(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    centre, width = window
    lo = centre - width / 2.0
    return np.clip((values - lo) / width, 0.0, 1.0)


def _minmax(a: np.ndarray) -> np.ndarray:
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape)
    lo, hi = float(a[finite].min()), float(a[finite].max())
    if hi <= lo:
        return np.zeros(a.shape)
    out = (a - lo) / (hi - lo)
    out[~finite] = 0.0
    return out


def percentile_scale(x: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Clips to the image's own percentiles, then [0, 1]; min-max when those coincide but the image
    is not constant (a few bright voxels on a flat background); a constant image -> zeros."""
    finite = np.isfinite(x)
    if not finite.any():
        return np.zeros(x.shape)
    vals = x[finite]
    lo, hi = (float(v) for v in np.percentile(vals, percentiles))
    if hi <= lo:
        lo, hi = float(vals.min()), float(vals.max())
    if hi <= lo:
        return np.zeros(x.shape)
    out = np.clip((x - lo) / (hi - lo), 0, 1)
    out[~finite] = 0.0
    return out
