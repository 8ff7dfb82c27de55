"""Intensity scaling shared by several formats: a (centre, width) window, and min-max to [0, 1]."""
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
