"""DICOM through pydicom, imported inside the functions that need it.

Modality LUT (Rescale Slope/Intercept), then the file's VOI LUT or Window Center/Width, or an
explicit CT `window` instead; MONOCHROME1 inverted so that high output values are bright;
multi-frame (`index` = frame); RGB, YBR and PALETTE COLOR to RGB.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medalign.data.readers._errors import _Bad
from medalign.data.readers._scaling import _apply_window, _minmax
from medalign.errors import one_line

_DICOM_SUFFIXES = {".dcm", ".dicom"}
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float and Double Float Pixel Data


def _dcmread(path: Path, **kwargs):
    """dcmread; files without the 128-byte preamble + DICM are retried with force=True only when
    named .dcm/.dicom (old exports), and must then carry pixel data or image attributes."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, **kwargs)
    except InvalidDicomError:
        if path.suffix.lower() not in _DICOM_SUFFIXES:
            raise _Bad("not a DICOM file (no DICM marker)") from None
    ds = pydicom.dcmread(path, force=True, **kwargs)
    if not any(k in ds for k in ("Rows", "SOPClassUID", "StudyInstanceUID", *_PIXEL_TAGS)):
        raise _Bad("not a DICOM file (no DICM marker and no image attributes)")
    return ds


def _require_pixels(ds) -> None:
    if not any(t in ds for t in _PIXEL_TAGS):
        raise _Bad(f"no pixel data (Modality {ds.get('Modality', 'unknown')}, not an image)")


def _n_frames(ds) -> int:
    raw = ds.get("NumberOfFrames", 1)
    return _as_int(raw if raw not in (None, "") else 1, "NumberOfFrames")


def _as_int(value, key: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _Bad(f"invalid {key} {str(value)!r}") from None


def _check_frame(ds, index: int | None) -> int:
    n = _n_frames(ds)
    k = 0 if index is None else index
    if k >= n:
        raise _Bad(f"frame index {k} out of range: the file has {n} frame{'' if n == 1 else 's'}")
    return k


def _transfer_syntax(ds):
    meta = getattr(ds, "file_meta", None)
    return meta.get("TransferSyntaxUID") if meta is not None else None


def _check_decoder(ds) -> None:
    """Compressed pixel data without an installed decoder: name the syntax and what to install."""
    from pydicom.pixels import get_decoder

    ts = _transfer_syntax(ds)
    if ts is None or not ts.is_compressed:
        return
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise _Bad(f"transfer syntax {ts.name} ({ts}) has no pixel data decoder in pydicom") from None
    if not decoder.is_available:
        raise _Bad(
            f"transfer syntax {ts.name} ({ts}) needs a decoder that is not installed; install one of: "
            + " | ".join(decoder.missing_dependencies)
        )


def _decode_frame(ds, k: int) -> np.ndarray:
    from pydicom.pixels import get_decoder, pixel_array

    try:
        # decodes only frame k; YBR_FULL/YBR_FULL_422 come back as RGB (pydicom's convert_color_space)
        return pixel_array(ds, index=k)
    except (RuntimeError, ValueError, NotImplementedError) as e:
        ts = _transfer_syntax(ds)
        if ts is None or not ts.is_compressed:
            raise
        hint = ""
        try:
            missing = get_decoder(ts).missing_dependencies
            if missing:
                hint = "; other decoders: " + " | ".join(missing)
        except Exception:
            pass
        raise _Bad(f"cannot decode transfer syntax {ts.name} ({ts}): {one_line(e)}{hint}") from None


def read(path: Path, index: int | None, window) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    ds = _dcmread(path)
    _require_pixels(ds)
    k = _check_frame(ds, index)
    _check_decoder(ds)
    arr = _decode_frame(ds, k)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()

    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        top = float(np.iinfo(rgb.dtype).max) if rgb.dtype.kind in "ui" else max(float(rgb.max()), 1.0)
        return np.clip(rgb.astype(np.float64) / top, 0, 1).transpose(2, 0, 1)
    if arr.ndim == 3:  # RGB (YBR already converted to RGB by pixel_array): display values
        if arr.dtype.kind in "ui":
            bits = int(ds.get("BitsStored") or arr.dtype.itemsize * 8)
            out = np.clip(arr.astype(np.float64) / (2.0**bits - 1.0), 0, 1)
        else:
            out = _minmax(arr.astype(np.float64))
        return out.transpose(2, 0, 1)

    out = _dicom_gray(arr, ds, k, window)
    if photometric == "MONOCHROME1":  # minimum value is white: invert so that high values are bright
        out = 1.0 - out
    return out[None]


def _dicom_gray(arr: np.ndarray, ds, k: int, window) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    _use_frame_functional_groups(ds, k)
    values = apply_modality_lut(arr, ds)
    if window is not None:
        return _apply_window(values.astype(np.float64), window)

    voi = _voi_kind(ds)
    if voi == "lut":
        lut = ds.VOILUTSequence[0]
        n_entries = int(lut.LUTDescriptor[0]) or 65536
        first = int(lut.LUTDescriptor[1])
        if values.dtype.kind == "f":  # LUT inputs are integers; rescale output is float64
            values = np.rint(values).astype(np.int64)
        # the LUT's own output range (its nominal bit depth is often wider than its data)
        probe = apply_voi_lut(np.arange(first, first + n_entries, dtype=np.int64), ds)
        lo, hi = float(probe.min()), float(probe.max())
        out = apply_voi_lut(values, ds).astype(np.float64)
        return np.clip((out - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros(out.shape)
    if voi == "window":
        try:
            out = apply_voi_lut(values, ds)
            # the window's output range as pydicom defines it: the images of -inf and +inf
            lo, hi = (float(v) for v in apply_voi_lut(np.array([-np.inf, np.inf]), ds))
        except (ValueError, TypeError, AttributeError):
            # unusable window tags (width < 1, unknown VOI function): fall back to the image range
            return _minmax(values.astype(np.float64))
        if hi > lo:
            return np.clip((out.astype(np.float64) - lo) / (hi - lo), 0, 1)
    return _minmax(values.astype(np.float64))


def _voi_kind(ds) -> str | None:
    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        return "lut"
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return "window"
    return None


def _use_frame_functional_groups(ds, k: int) -> None:
    """Enhanced multi-frame objects keep Rescale and Window per frame (or shared) in functional
    groups, where pydicom's LUT functions do not look: copy frame k's values to the top level."""
    macros = (
        ("PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept", "RescaleType")),
        ("FrameVOILUTSequence", ("WindowCenter", "WindowWidth", "VOILUTFunction")),
    )
    for name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(name)
        if not groups:
            continue
        item = groups[0] if name.startswith("Shared") else (groups[k] if k < len(groups) else None)
        if item is None:
            continue
        for macro, keys in macros:
            seq = item.get(macro)
            if seq:
                for key in keys:
                    if key in seq[0]:
                        setattr(ds, key, seq[0][key].value)


def verify(path: Path, index: int | None) -> None:
    from pydicom.pixels.utils import get_expected_length

    ds = _dcmread(path, defer_size=4096)  # large values (the pixel data) are not read
    _require_pixels(ds)
    _check_frame(ds, index)
    _check_decoder(ds)
    ts = _transfer_syntax(ds)
    raw = ds.get_item(0x7FE00010, keep_deferred=True)
    length, offset = getattr(raw, "length", None), getattr(raw, "value_tell", None)
    if raw is None or length is None or offset is None or length == 0xFFFFFFFF:
        return  # encapsulated or float pixel data: only a decode can check it
    if offset + length > path.stat().st_size:
        held = path.stat().st_size - offset
        raise _Bad(f"truncated: pixel data needs {length} bytes, the file holds {held}")
    if ts is None or not ts.is_compressed:
        expected = get_expected_length(ds, "bytes")
        if length < expected:
            raise _Bad(f"pixel data has {length} bytes, the image attributes need {expected}")
