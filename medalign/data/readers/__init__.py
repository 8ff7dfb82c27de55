"""Image decoding: one entry point, `read_image`, returning float32 (C, H, W) in [0, 1].

Formats, chosen by suffix (and by the DICOM magic ``DICM`` at byte 128 for files whose suffix is
not a known image suffix, as PACS exports often have no extension or a numeric one):

- PNG/JPEG/TIFF/BMP/... (8 and 16 bit) through Pillow; `index` picks a page of a multi-page TIFF.
- DICOM (``.dcm``, ``.dicom``, or the magic) through pydicom: Modality LUT (Rescale Slope/Intercept),
  then the file's VOI LUT or Window Center/Width, or an explicit CT `window` instead; MONOCHROME1
  inverted so that high output values are bright; multi-frame (`index` = frame); RGB, YBR and
  PALETTE COLOR to RGB.
- NIfTI (``.nii``, ``.nii.gz``) through nibabel: one slice along voxel axis `axis` (default 2, the
  manifest's `axis` column), shown as a radiology viewer shows it (see `nifti._radiological_view`),
  percentile-scaled.
- ``.npz`` holding exactly one image array (N, H, W) or (N, H, W, C) / (N, C, H, W): `index` = row.

`read_header` returns a fixed list of non-identifying DICOM tags (plus PatientID, which
patient-level split checks need) without decoding pixels. It never returns PatientName,
PatientBirthDate, PatientSex, PatientAge, AccessionNumber, InstitutionName, physician names or any
other tag outside `HEADER_TAGS`.

pydicom and nibabel are imported inside the functions that need them, so importing this package
(and the CLI) does not pay for them. Every failure is a `DataError` with one line naming the file.

One module per format (`pillow`, `dicom`, `nifti`, `npz`), each with `read(path, index, window)` and
`verify(path, index)` (NIfTI's take the slicing `axis` too); `_scaling` holds the window and min-max
scaling that several formats share, `_errors` the internal failure type `_Bad`
(medalign.errors.one_line words library exceptions). `unreadable` runs the formats' `verify`: it is
the one readability check, used by the stages before training and by `medalign manifest validate`.
"""
from __future__ import annotations

import math
import operator
from pathlib import Path

import numpy as np

from medalign.data.readers import dicom, nifti, npz, pillow
from medalign.data.readers._errors import _Bad
from medalign.data.readers._scaling import percentile_scale
from medalign.data.readers.dicom import _DICOM_SUFFIXES, _as_int, _dcmread
from medalign.errors import DataError, one_line

# CT window presets in Hounsfield units: name -> (centre, width).
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}

# The only DICOM attributes `read_header` returns (TransferSyntaxUID comes from the file meta).
HEADER_TAGS: tuple[str, ...] = (
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "Manufacturer",
    "BodyPartExamined",
    "ViewPosition",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "PhotometricInterpretation",
    "BitsStored",
)
_INT_TAGS = {"Rows", "Columns", "NumberOfFrames", "BitsStored"}

_PILLOW_SUFFIXES = {
    ".png", ".jpg", ".jpeg", ".jpe", ".tif", ".tiff", ".bmp", ".gif", ".webp",
    ".jp2", ".j2k", ".pgm", ".ppm", ".pbm", ".pnm",
}
_KIND_NAMES = {"pillow": "image", "dicom": "DICOM", "nifti": "NIfTI", "npz": "npz"}

_FORMATS = {"pillow": pillow, "dicom": dicom, "nifti": nifti, "npz": npz}


# ----------------------------------------------------------------------------------------------
# public API


def read_image(
    path: str | Path,
    channels: int = 1,
    index: int | None = None,
    window: str | tuple[float, float] | None = None,
    percentiles: tuple[float, float] | None = None,
    axis: int | None = None,
) -> np.ndarray:
    """Decodes an image to float32 (channels, H, W) in [0, 1].

    `index`: DICOM frame (default 0), NIfTI slice along voxel `axis` (default 2; index default: the
    middle slice), npz row (default 0), TIFF/GIF page (default 0). `axis` is for NIfTI only; any
    other format refuses it. `window`: a `CT_WINDOWS` preset name or a
    (centre, width) tuple in the units after the Modality LUT (HU for CT); it replaces the file's
    own VOI for grayscale DICOM and the percentile scaling for NIfTI. Images that are already
    display values (PNG/JPEG/npz, colour DICOM) ignore it. `percentiles` (low, high): clip the
    decoded image to its own percentiles and rescale to [0, 1], the usual MR and X-ray recipe.
    """
    path = Path(path)
    win = _resolve_window(window)
    index, axis = _check_index(index), _check_axis(axis)
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    kind = _kind(path)
    try:
        if kind == "nifti":
            array = nifti.read(path, index, win, axis)
        else:
            _no_axis(kind, axis)
            array = _FORMATS[kind].read(path, index, win)
    except _Bad as e:
        raise DataError(f"cannot read {_KIND_NAMES[kind]} {path}: {e}") from None
    except MemoryError:
        raise
    except Exception as e:  # the libraries raise many types for corrupt files; none may leak a traceback
        raise DataError(f"cannot read {_KIND_NAMES[kind]} {path}: {one_line(e)}") from None
    if percentiles is not None:
        array = percentile_scale(np.asarray(array, dtype=np.float64), tuple(percentiles))
    return _to_channels(np.asarray(array, dtype=np.float32), channels, path)


def read_header(path: str | Path) -> dict[str, str | int]:
    """Returns the `HEADER_TAGS` present in a DICOM file (plus TransferSyntaxUID), as str/int.

    Reads with ``stop_before_pixels`` and ``specific_tags``: no pixel data is read or decoded.
    Identifying fields such as PatientName or PatientBirthDate are never returned.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"DICOM file not found: {path}")
    if _kind(path) != "dicom":
        raise DataError(f"read_header reads DICOM only; {path} is not a DICOM file")
    try:
        ds = _dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
        out: dict[str, str | int] = {}
        for key in HEADER_TAGS:
            value = ds.get(key)
            if value is None or value == "":
                continue
            if key in _INT_TAGS:
                out[key] = _as_int(value, key)
            else:
                out[key] = "\\".join(map(str, value)) if _is_multi(value) else str(value)
        ts = getattr(ds, "file_meta", None) and ds.file_meta.get("TransferSyntaxUID")
        if ts:
            out["TransferSyntaxUID"] = str(ts)
        return out
    except _Bad as e:
        raise DataError(f"cannot read DICOM header {path}: {e}") from None
    except MemoryError:
        raise
    except Exception as e:
        raise DataError(f"cannot read DICOM header {path}: {one_line(e)}") from None


def verify_images(paths: list[Path], indices: list[int | None] | None = None,
                  axes: list[int | None] | None = None) -> None:
    """Checks every image before training starts and names every unreadable one, all at once."""
    bad = unreadable(paths, indices, axes)
    if bad:
        raise DataError(f"{len(bad)} unreadable image(s): " + "; ".join(f"{paths[i]} ({why})" for i, why in bad))


def unreadable(paths: list[Path], indices: list[int | None] | None = None,
               axes: list[int | None] | None = None) -> list[tuple[int, str]]:
    """(position, reason) of every path that will not read, without decoding pixels where avoidable.

    Cheap where the library allows: PNG chunks and their CRCs (Pillow's `verify`), other Pillow
    formats decoded (JPEG at 1/8 scale), DICOM headers with the pixel data deferred (frame count, a
    decoder for the transfer syntax, and for uncompressed data that the file holds all the bytes
    the header promises), NIfTI headers (slice count along the axis; data size for .nii), npz array
    headers. `indices[i]` and `axes[i]` are what `read_image` will be called with for `paths[i]`.
    """
    for name, values in (("indices", indices), ("axes", axes)):
        if values is not None and len(values) != len(paths):
            raise ValueError(f"unreadable: {len(paths)} paths but {len(values)} {name}")
    bad = []
    for i, p in enumerate(paths):
        p = Path(p)
        try:
            idx = _check_index(None if indices is None else indices[i])
            axis = _check_axis(None if axes is None else axes[i])
            if not p.is_file():
                raise _Bad("not found")
            kind = _kind(p)
            if kind == "nifti":
                nifti.verify(p, idx, axis)
            else:
                _no_axis(kind, axis)
                _FORMATS[kind].verify(p, idx)
        except (DataError, _Bad) as e:
            bad.append((i, str(e)))
        except MemoryError:
            raise
        except Exception as e:
            bad.append((i, one_line(e)))
    return bad


# ----------------------------------------------------------------------------------------------
# dispatch and arguments


def image_format(path: str | Path) -> str:
    """Which reader takes `path`: "pillow", "dicom", "nifti" or "npz" (suffix, else the DICM magic)."""
    return _kind(Path(path))


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix in _DICOM_SUFFIXES:
        return "dicom"
    if suffix in _PILLOW_SUFFIXES:
        return "pillow"
    return "dicom" if has_dicm_magic(path) else "pillow"


def has_dicm_magic(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' at byte 128, whatever their name (PACS exports often have none)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _resolve_window(window) -> tuple[float, float] | None:
    if window is None:
        return None
    if isinstance(window, str):
        if window.lower() in CT_WINDOWS:
            return CT_WINDOWS[window.lower()]
        raise DataError(
            f"unknown window preset {window!r}; presets: {', '.join(CT_WINDOWS)} (or a (centre, width) pair)"
        )
    try:
        centre, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise DataError(f"window must be a preset name or a (centre, width) pair, got {window!r}") from None
    if not (math.isfinite(centre) and math.isfinite(width) and width > 0):
        raise DataError(f"window (centre, width) needs finite values and width > 0, got {window!r}")
    return centre, width


def _check_index(index) -> int | None:
    if index is None:
        return None
    try:
        if isinstance(index, bool):
            raise TypeError
        index = operator.index(index)
    except TypeError:
        raise DataError(f"index must be an integer or None, got {index!r}") from None
    if index < 0:
        raise DataError(f"index must be >= 0, got {index}")
    return index


def _check_axis(axis) -> int | None:
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or axis not in (0, 1, 2):
        raise DataError(f"axis must be 0, 1 or 2 (a NIfTI volume's voxel axis) or None, got {axis!r}")
    return int(axis)


def _no_axis(kind: str, axis: int | None) -> None:
    # A slicing axis on a 2D file or a DICOM frame is a manifest mix-up, not something to ignore.
    if axis is not None:
        raise _Bad(f"an axis ({axis}) applies to NIfTI volumes only, not to a {_KIND_NAMES[kind]} file")


# ----------------------------------------------------------------------------------------------
# output channels and header values


def _to_channels(a: np.ndarray, channels: int, path: Path) -> np.ndarray:
    if a.shape[0] == channels:
        return np.ascontiguousarray(a)
    if channels == 1 and a.shape[0] == 3:  # ITU-R 601 luma, as Pillow's convert("L")
        return np.tensordot(np.array([0.299, 0.587, 0.114], np.float32), a, axes=1)[None]
    if channels == 3 and a.shape[0] == 1:
        return np.repeat(a, 3, axis=0)
    raise DataError(f"image {path} has {a.shape[0]} channels; cannot make {channels}")


def _is_multi(value) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"
