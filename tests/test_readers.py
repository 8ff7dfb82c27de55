"""readers: PNG/DICOM/NIfTI/npz through one call, checked against the libraries' own decoding.

Only data that ships inside the installed packages is used (pydicom's test files, nibabel's test
data, nilearn's packaged MNI152 template); nothing is downloaded: pydicom files are looked up with
download=False and a missing one skips its test.
"""
from __future__ import annotations

import importlib.util
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")

from pydicom.data import get_testdata_file  # noqa: E402

from medalign.data.readers import CT_WINDOWS, read_header, read_image, verify_images  # noqa: E402
from medalign.errors import DataError  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on its odd samples


def dcm(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed locally (would need a download)")
    return path


def dicomdir_tree() -> Path:
    return Path(dcm("dicomdirtests"))


def nib_data(name: str) -> str:
    from nibabel.testing import data_path

    path = os.path.join(data_path, name)
    if not os.path.exists(path):
        pytest.skip(f"nibabel test file {name} not installed")
    return path


def mni_template() -> str:
    # the file that nilearn.datasets.load_mni152_template() reads, found without importing nilearn
    spec = importlib.util.find_spec("nilearn")
    if spec is None:
        pytest.skip("nilearn not installed")
    data = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    path = data / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    if not path.exists():
        pytest.skip("nilearn's packaged MNI152 template not found")
    return str(path)


def minmax(a):
    a = a.astype(np.float64)
    return (a - a.min()) / (a.max() - a.min())


def linear_window(values, centre, width):
    """DICOM PS3.3 C.11.2.1.2.1 'LINEAR' window, written out independently of pydicom."""
    c, w = centre - 0.5, width - 1.0
    y = (values - c) / w + 0.5
    y[values <= c - w / 2] = 0.0
    y[values > c + w / 2] = 1.0
    return np.clip(y, 0, 1)


def assert_one_line_error(excinfo, name: str):
    msg = str(excinfo.value)
    assert name in msg, msg
    assert "\n" not in msg and "Traceback" not in msg, msg


# ---------------------------------------------------------------------------------- DICOM


def test_ct_small_modality_lut_minmax_and_lung_window():
    path = dcm("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assert "WindowCenter" not in ds  # so the reader falls back to the image's own range
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)

    out = read_image(path)
    assert out.shape == (1, 128, 128) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], minmax(hu), atol=1e-5)

    lung = read_image(path, window="lung")
    np.testing.assert_allclose(lung[0], np.clip((hu + 1350.0) / 1500.0, 0, 1), atol=1e-5)
    assert CT_WINDOWS["lung"] == (-600.0, 1500.0)
    np.testing.assert_allclose(read_image(path, window=(-600, 1500)), lung, atol=0)
    brain = read_image(path, window="brain")
    np.testing.assert_allclose(brain[0], np.clip((hu - 0.0) / 80.0, 0, 1), atol=1e-5)


def test_unknown_window_preset_lists_the_presets():
    with pytest.raises(DataError) as e:
        read_image(dcm("CT_small.dcm"), window="abdomen")
    for name in CT_WINDOWS:
        assert name in str(e.value)
    with pytest.raises(DataError):
        read_image(dcm("CT_small.dcm"), window=(40, 0))


def test_mr_small_uses_its_own_window():
    path = dcm("MR_small.dcm")
    ds = pydicom.dcmread(path)
    centre, width = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = linear_window(ds.pixel_array.astype(np.float64), centre, width)
    out = read_image(path)
    assert out.shape == (1, 64, 64)
    np.testing.assert_allclose(out[0], expected, atol=1e-5)
    # the window changes the result compared with plain min-max
    assert np.abs(out[0] - minmax(ds.pixel_array)).max() > 0.05


def test_monochrome1_shipped_file_is_inverted_and_found_by_dicm_magic():
    # an extensionless CR from pydicom's DICOMDIR tree: MONOCHROME1, rescale and a window
    path = dicomdir_tree() / "77654033" / "CR1" / "6154"
    if not path.exists():
        pytest.skip("DICOMDIR test tree lacks CR1/6154")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    values = ds.pixel_array.astype(np.float64) * slope + intercept
    expected = 1.0 - linear_window(values, float(ds.WindowCenter), float(ds.WindowWidth))
    out = read_image(path)
    assert out.shape == (1, ds.Rows, ds.Columns)
    np.testing.assert_allclose(out[0], expected, atol=1e-5)


def test_monochrome1_copy_of_ct_small_is_the_inverse(tmp_path):
    ds = pydicom.dcmread(dcm("CT_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    mono1 = tmp_path / "ct_mono1.dcm"
    ds.save_as(mono1)
    original = read_image(dcm("CT_small.dcm"), window="mediastinum")
    np.testing.assert_allclose(read_image(mono1, window="mediastinum"), 1.0 - original, atol=1e-6)


def test_enhanced_functional_group_rescale_is_applied(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(dcm("CT_small.dcm"))
    slope, intercept = ds.RescaleSlope, ds.RescaleIntercept
    del ds.RescaleSlope, ds.RescaleIntercept
    pvt = Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = slope, intercept, "HU"
    shared = Dataset()
    shared.PixelValueTransformationSequence = Sequence([pvt])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    path = tmp_path / "enhanced.dcm"
    ds.save_as(path)
    np.testing.assert_allclose(
        read_image(path, window="lung"), read_image(dcm("CT_small.dcm"), window="lung"), atol=1e-6
    )


def test_multiframe_frames_and_out_of_range():
    path = dcm("rtdose.dcm")  # 15 frames of 10x10, uncompressed
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array
    assert frames.shape[0] == int(ds.NumberOfFrames) == 15
    np.testing.assert_allclose(read_image(path)[0], minmax(frames[0]), atol=1e-5)
    np.testing.assert_allclose(read_image(path, index=0)[0], minmax(frames[0]), atol=1e-5)
    np.testing.assert_allclose(read_image(path, index=3)[0], minmax(frames[3]), atol=1e-5)
    assert not np.allclose(minmax(frames[0]), minmax(frames[3]))
    with pytest.raises(DataError) as e:
        read_image(path, index=15)
    assert "15 frame" in str(e.value)
    assert_one_line_error(e, "rtdose.dcm")


def test_multiframe_colour_ybr_jpeg():
    path = dcm("examples_ybr_color.dcm")  # 30 frames, YBR_FULL_422, JPEG baseline (Pillow decodes)
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array  # pydicom converts YBR to RGB
    out = read_image(path, channels=3, index=3)
    assert out.shape == (3, 240, 320)
    np.testing.assert_allclose(out, frames[3].transpose(2, 0, 1) / 255.0, atol=1e-6)


def test_rgb_dicom_three_channels_or_luma():
    path = dcm("examples_rgb_color.dcm")
    rgb = pydicom.dcmread(path).pixel_array.astype(np.float64) / 255.0
    out = read_image(path, channels=3)
    assert out.shape == (3, 240, 320)
    np.testing.assert_allclose(out, rgb.transpose(2, 0, 1), atol=1e-6)
    gray = read_image(path, channels=1)
    assert gray.shape == (1, 240, 320)
    np.testing.assert_allclose(gray[0], rgb @ np.array([0.299, 0.587, 0.114]), atol=1e-5)


def test_ybr_uncompressed_is_converted_to_rgb():
    from pydicom.pixels import convert_color_space, pixel_array

    path = dcm("SC_ybr_full_422_uncompressed.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "YBR_FULL_422"
    raw = pixel_array(ds, raw=True)
    rgb = convert_color_space(raw, "YBR_FULL", "RGB")
    np.testing.assert_allclose(read_image(path, channels=3), rgb.transpose(2, 0, 1) / 255.0, atol=1e-6)


def test_missing_decoder_names_the_transfer_syntax():
    from pydicom.pixels import get_decoder

    path = dcm("MR_small_jpeg_ls_lossless.dcm")
    ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if get_decoder(ts).is_available:
        pytest.skip(f"a {ts.name} decoder is installed here; nothing is missing")
    with pytest.raises(DataError) as e:
        read_image(path)
    assert_one_line_error(e, "MR_small_jpeg_ls_lossless.dcm")
    assert "JPEG-LS Lossless" in str(e.value) and "install" in str(e.value)
    assert "pylibjpeg" in str(e.value) or "pyjpegls" in str(e.value) or "gdcm" in str(e.value)


def test_decoder_that_fails_names_the_transfer_syntax():
    path = dcm("JPGExtended.dcm")  # 12-bit JPEG Extended: Pillow alone cannot decode it
    try:
        out = read_image(path)
    except DataError as e:
        assert "JPEG Extended" in str(e) and "JPGExtended.dcm" in str(e) and "\n" not in str(e)
    else:  # a capable decoder (pylibjpeg/gdcm) is installed
        assert out.shape == (1, 1024, 256)


def test_read_header_over_dicomdir_tree_never_returns_patient_name():
    root = dicomdir_tree()
    files = [
        p for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(("DICOMDIR", "README"))
    ]
    assert len(files) > 20
    seen = 0
    for p in files:
        full = pydicom.dcmread(p, stop_before_pixels=True)
        header = read_header(p)
        assert set(header) <= {
            "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "Manufacturer",
            "BodyPartExamined", "ViewPosition", "Rows", "Columns", "NumberOfFrames",
            "PhotometricInterpretation", "BitsStored", "TransferSyntaxUID",
        }
        assert "PatientName" in full and "PatientName" not in header
        assert "PatientBirthDate" not in header
        assert header["PatientID"] == str(full.PatientID)
        assert header["StudyInstanceUID"] == str(full.StudyInstanceUID)
        assert header["TransferSyntaxUID"] == str(full.file_meta.TransferSyntaxUID)
        assert all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in header.values())
        if "Rows" in full:
            assert header["Rows"] == int(full.Rows) and type(header["Rows"]) is int
        seen += 1
    assert seen == len(files)


def test_read_header_rejects_non_dicom(tmp_path):
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png)
    with pytest.raises(DataError):
        read_header(png)


# ---------------------------------------------------------------------------------- NIfTI


def expected_axial(path, k):
    """Independent of the reader's affine logic: nibabel's own reorientation to RAS+, then the
    radiology view of an axial slice (rows anterior->posterior, patient's right on the left)."""
    img = nib.load(path)
    can = nib.as_closest_canonical(img)
    assert nib.aff2axcodes(img.affine)[2] == "S"  # these files are axial stacks, inferior first
    data = can.get_fdata()
    sl = data[:, :, k] if data.ndim == 3 else data[:, :, k, 0]
    view = sl.T[::-1, ::-1]
    lo, hi = np.percentile(view, [0.5, 99.5])
    return np.clip((view - lo) / (hi - lo), 0, 1)


@pytest.mark.parametrize("name", ["anatomical.nii", "reoriented_anat_moved.nii", "example4d.nii.gz"])
def test_nibabel_slices_match_canonical_radiology_view(name):
    path = nib_data(name)
    img = nib.load(path)
    k = img.shape[2] // 3
    out = read_image(path, index=k)
    assert out.shape == (1, img.shape[1], img.shape[0])  # transposed: rows run along voxel axis 1
    np.testing.assert_allclose(out[0], expected_axial(path, k), atol=1e-5)
    # and against get_fdata directly: for LAS storage only the rows flip, for RAS also the columns
    raw = np.asarray(img.get_fdata())[..., k] if img.ndim == 3 else np.asarray(img.get_fdata())[:, :, k, 0]
    flip_cols = nib.aff2axcodes(img.affine)[0] == "R"
    view = raw.T[::-1, ::-1] if flip_cols else raw.T[::-1]
    lo, hi = np.percentile(view, [0.5, 99.5])
    np.testing.assert_allclose(out[0], np.clip((view - lo) / (hi - lo), 0, 1), atol=1e-5)
    with pytest.raises(DataError) as e:
        read_image(path, index=img.shape[2])
    assert f"{img.shape[2]} slices" in str(e.value)
    assert_one_line_error(e, name)


def test_mni152_template_slice(tmp_path):
    src = mni_template()
    path = tmp_path / "mni152.nii.gz"
    shutil.copy(src, path)
    img = nib.load(path)
    assert img.shape == (197, 233, 189)
    k = 90
    out = read_image(path, index=k, channels=3)
    assert out.shape == (3, 233, 197)
    np.testing.assert_allclose(out[0], expected_axial(path, k), atol=1e-5)
    assert 0.0 <= out.min() and out.max() == pytest.approx(1.0)
    # default index is the middle slice
    np.testing.assert_allclose(read_image(path), read_image(path, index=189 // 2))
    with pytest.raises(DataError) as e:
        read_image(path, index=189)
    assert "189 slices" in str(e.value)


def test_constant_nifti_slice_is_zeros_and_window_applies(tmp_path):
    data = np.full((6, 5, 3), 7, np.int16)
    data[:, :, 2] = np.arange(30).reshape(6, 5) * 100 - 1000
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([-1.0, -1.0, 1.0, 1.0])), path)  # LPS storage
    flat = read_image(path, index=0)
    assert flat.shape == (1, 5, 6) and np.all(flat == 0) and not np.isnan(flat).any()
    hu = read_image(path, index=2, window=(0, 1000))[0]
    # LPS: axis 0 grows to the patient's left (no column flip), axis 1 grows posterior (no row flip)
    np.testing.assert_allclose(hu, np.clip((data[:, :, 2].T + 500.0) / 1000.0, 0, 1), atol=1e-6)


# ---------------------------------------------------------------------------------- npz and Pillow


def test_npz_single_array_and_ambiguous(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (5, 8, 9), dtype=np.uint8)
    one = tmp_path / "one.npz"
    np.savez_compressed(one, train_images=arr, train_labels=np.arange(5))
    out = read_image(one, index=2)
    assert out.shape == (1, 8, 9)
    np.testing.assert_allclose(out[0], arr[2] / 255.0, atol=1e-7)
    with pytest.raises(DataError) as e:
        read_image(one, index=5)
    assert "5 rows" in str(e.value)

    rgb = np.random.default_rng(1).integers(0, 256, (3, 8, 9, 3), dtype=np.uint8)
    rgb_path = tmp_path / "rgb.npz"
    np.savez(rgb_path, images=rgb)
    np.testing.assert_allclose(read_image(rgb_path, channels=3, index=1), rgb[1].transpose(2, 0, 1) / 255.0)

    two = tmp_path / "two.npz"
    np.savez(two, train_images=arr, val_images=arr[:2])
    with pytest.raises(DataError) as e:
        read_image(two, index=0)
    assert "train_images" in str(e.value) and "val_images" in str(e.value)
    assert_one_line_error(e, "two.npz")


def test_png_unchanged_and_multipage_tiff(tmp_path):
    a = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    png = tmp_path / "a.png"
    Image.fromarray(a).save(png)
    np.testing.assert_allclose(read_image(png)[0], a / 255.0)
    pages = [Image.fromarray(a), Image.fromarray(255 - a)]
    tif = tmp_path / "stack.tif"
    pages[0].save(tif, save_all=True, append_images=pages[1:])
    np.testing.assert_allclose(read_image(tif, index=1)[0], (255 - a) / 255.0)
    with pytest.raises(DataError):
        read_image(tif, index=2)


# ---------------------------------------------------------------------------------- corrupt files


def corrupt_files(tmp_path) -> list[Path]:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(buf, "PNG")
    truncated_png = tmp_path / "truncated.png"
    truncated_png.write_bytes(buf.getvalue()[:100])
    text_dcm = tmp_path / "notes.dcm"
    text_dcm.write_text("this is a text file, not DICOM\n" * 20)
    text_nii = tmp_path / "notes.nii.gz"
    text_nii.write_text("this is a text file, not NIfTI\n" * 20)
    return [Path(dcm("MR_truncated.dcm")), Path(dcm("badVR.dcm")), truncated_png, text_dcm, text_nii]


def test_corrupt_files_give_one_line_data_errors(tmp_path):
    for path in corrupt_files(tmp_path):
        with pytest.raises(DataError) as e:
            read_image(path)
        assert_one_line_error(e, path.name)


def test_badvr_is_an_invalid_number_of_frames():
    # badVR.dcm carries NumberOfFrames '1A' (VR IS): pydicom parses the file, the value is unusable
    with pytest.raises(DataError) as e:
        read_image(dcm("badVR.dcm"))
    assert "NumberOfFrames" in str(e.value) and "1A" in str(e.value)
    with pytest.raises(DataError):
        read_header(dcm("badVR.dcm"))


def test_verify_images_reports_only_the_broken_ones_at_once(tmp_path):
    good_png = tmp_path / "good.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(good_png)
    bad = corrupt_files(tmp_path)
    good = [good_png, Path(dcm("CT_small.dcm")), Path(nib_data("anatomical.nii")), Path(dcm("rtdose.dcm"))]
    paths = good + bad + [Path(dcm("rtdose.dcm")), Path(nib_data("example4d.nii.gz"))]
    indices = [None, None, 10, 14] + [None] * len(bad) + [15, 24]
    with pytest.raises(DataError) as e:
        verify_images(paths, indices)
    msg = str(e.value)
    assert msg.startswith(f"{len(bad) + 2} unreadable image(s)")
    for p in bad:
        assert p.name in msg
    assert "15 frame" in msg and "24 slices" in msg
    for p in (good_png, "CT_small.dcm", "anatomical.nii"):
        assert str(p) not in msg if isinstance(p, Path) else p not in msg
    assert "\n" not in msg
    verify_images(good, [None, None, 10, 14])  # all good: no error


def test_readers_import_neither_pydicom_nor_nibabel():
    code = (
        "import sys, medalign.data.readers; "
        "print(sorted(m for m in ('pydicom', 'nibabel', 'monai') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"



def expected_sagittal(path, k):
    """Independent of the reader's affine logic: nibabel's RAS+ reorientation, then the radiology
    view of a sagittal slice (rows superior -> inferior, anterior on the viewer's left)."""
    img = nib.load(path)
    can = nib.as_closest_canonical(img)
    data = can.get_fdata()
    flipped = nib.aff2axcodes(img.affine)[0] == "L"  # voxel axis 0 runs right -> left: RAS+ reverses it
    sl = data[img.shape[0] - 1 - k if flipped else k]
    view = sl.T[::-1, ::-1]
    lo, hi = np.percentile(view, [0.5, 99.5])
    return np.clip((view - lo) / (hi - lo), 0, 1)


def test_axis_column_from_build_reaches_the_dataset_and_cache(tmp_path, monkeypatch):
    from medalign import cli
    from medalign.data.datasets import ImageDataset
    from medalign.data.manifest import read_manifest
    from medalign.data.preprocess_cache import resize_hwc

    shutil.copy(nib_data("anatomical.nii"), tmp_path / "anatomical.nii")
    cli.main(["manifest", "build", "nifti", str(tmp_path / "anatomical.nii"), str(tmp_path / "m.csv"), "--axis", "0"])
    manifest = read_manifest(tmp_path / "m.csv")
    rows = [r for r in manifest.rows if r["index"] in ("12", "20")]
    assert [r["axis"] for r in rows] == ["0", "0"]
    dataset = ImageDataset(manifest, rows, lambda image: image, 1)
    for i, row in enumerate(rows):
        image, _ = dataset[i]
        assert image.shape == (25, 41, 1)  # (S, A): a sagittal slice of the 33 x 41 x 25 volume
        np.testing.assert_allclose(image[..., 0], expected_sagittal(tmp_path / "anatomical.nii", int(row["index"])),
                                   atol=1e-5)
    monkeypatch.setenv("MEDALIGN_CACHE", str(tmp_path / "cache"))
    cached = ImageDataset(manifest, rows, lambda image: image, 1, cache_size=16)
    for i in range(len(rows)):
        np.testing.assert_allclose(cached[i][0], resize_hwc(dataset[i][0], 16), atol=2 / 65535)
    with pytest.raises(DataError, match="applies to NIfTI volumes only"):
        read_image(dcm("CT_small.dcm"), axis=0)
    with pytest.raises(DataError, match="axis must be 0, 1 or 2"):
        read_image(tmp_path / "anatomical.nii", axis=3)
