"""NIfTI (.nii, .nii.gz) through nibabel, imported inside the functions that need it: one slice
along a voxel axis (2 unless the manifest's `axis` column says otherwise), shown as a radiology
viewer shows it, percentile-scaled or windowed."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medalign.data.readers._errors import _Bad
from medalign.data.readers._scaling import _apply_window, percentile_scale


def read(path: Path, index: int | None, window, axis: int | None = None) -> np.ndarray:
    import nibabel as nib

    img = nib.load(path)
    shape = img.shape
    axis = 2 if axis is None else axis
    k = _slice_index(shape, index, axis)
    # proxy slicing: reads one slice (for 4D: of the first volume), not the whole file's data
    key = [slice(None)] * min(len(shape), 3) + [0] * max(len(shape) - 3, 0)
    if len(shape) >= 3:
        key[axis] = k
    sl = np.asarray(img.dataobj[tuple(key)], dtype=np.float64)
    sl = _radiological_view(sl, img.affine, axis)
    if window is not None:
        return _apply_window(sl, window)[None]
    return percentile_scale(sl)[None]


def _slice_index(shape, index: int | None, axis: int = 2) -> int:
    """The slice along voxel `axis` that `index` names; a 2D image is its own single slice."""
    if len(shape) < 2:
        raise _Bad(f"not an image: shape {shape}")
    if len(shape) == 2:
        if axis != 2:
            raise _Bad(f"a 2D image {shape} has no slices along axis {axis}")
        if index not in (None, 0):
            raise _Bad(f"slice index {index} out of range: the volume has 1 slice")
        return 0
    n = int(shape[axis])
    k = n // 2 if index is None else index  # default: the middle slice (slice 0 is often empty)
    if k >= n:
        raise _Bad(f"slice index {k} out of range: the volume has {n} slice{'' if n == 1 else 's'} "
                   f"along axis {axis}")
    return k


def _radiological_view(sl: np.ndarray, affine, axis: int = 2) -> np.ndarray:
    """Orients a slice across voxel `axis` (its two axes: the other voxel axes, in order) as a
    radiology viewer shows it, using the affine.

    Chosen convention: rows top-to-bottom run anterior -> posterior for an axial slice (superior
    -> inferior when a S/I axis is in-plane: sagittal and coronal slices), and columns left-to-right
    run from the patient's right to left (radiological convention: patient's right on the viewer's
    left); for a sagittal slice, anterior is on the left. For the common RAS/LAS storage of an axial
    slice this is `slice.T` with its rows flipped (and, for RAS, its columns flipped). Without a
    usable affine, `slice.T[::-1]` (voxel order, j up).
    """
    import nibabel as nib

    rank = {"S": 2, "I": 2, "A": 1, "P": 1, "L": 0, "R": 0}
    try:
        codes = nib.aff2axcodes(affine)
        c0, c1 = (codes[i] for i in range(3) if i != axis)
    except Exception:
        c0 = c1 = None
    if c0 is None or c1 is None or rank[c0] == rank[c1]:
        return sl.T[::-1]
    if rank[c0] > rank[c1]:
        out, row_code, col_code = sl, c0, c1
    else:
        out, row_code, col_code = sl.T, c1, c0
    if row_code in ("S", "A"):  # index grows upward in the body: put it at the top
        out = out[::-1, :]
    if col_code in ("R", "A"):  # patient's right (or anterior) on the viewer's left
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def verify(path: Path, index: int | None, axis: int | None = None) -> None:
    import nibabel as nib

    img = nib.load(path)  # reads the header only
    shape = img.shape
    _slice_index(shape, index, 2 if axis is None else axis)
    if path.name.lower().endswith(".nii"):  # uncompressed: the file must hold all the voxels
        header = img.header
        need = int(header.get_data_offset()) + int(np.prod(shape)) * header.get_data_dtype().itemsize
        if path.stat().st_size < need:
            raise _Bad(f"truncated: the header promises {need} bytes, the file has {path.stat().st_size}")
