"""Tests for medalign.data.validate: every problem of a manifest reported at once."""

from __future__ import annotations

import csv
import io
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medalign.data import build
from medalign.data.validate import HASH_BITS, NEAR_THRESHOLD, hamming, perceptual_hash, validate

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CHEST_XRAY = SHARED_DATA / "chest_xray"


def _smooth(seed: int, size: int = 64) -> np.ndarray:
    """A smooth random image: structure at several scales, like anatomy, unlike white noise."""
    small = np.random.default_rng(seed).integers(0, 256, (6, 6), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))


def _save(path: Path, array: np.ndarray, **kw) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return path.name if path.parent.name == "imgs" else f"{path.parent.name}/{path.name}"


def _manifest(root: Path, rows: list[tuple], columns=("path", "label", "split", "patient_id")) -> Path:
    out = root / "manifest.csv"
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        w.writerows(rows)
    return out


def test_clean_manifest(tmp_path):
    rows = [(f"{i}.png", "AB"[i % 2], split, f"P{i}") for i, split in
            enumerate(["train"] * 4 + ["val"] * 2 + ["test"] * 2)]
    for i, r in enumerate(rows):
        _save(tmp_path / r[0], _smooth(i))
    report = validate(_manifest(tmp_path, rows))
    assert report.ok and report.errors == [] and report.warnings == []
    assert report.stats["class_counts"] == {"test": {"A": 1, "B": 1}, "train": {"A": 2, "B": 2},
                                            "val": {"A": 1, "B": 1}}
    assert report.stats["exact_duplicate_groups"] == 0 and report.stats["near_duplicate_pairs"] == 0
    assert report.stats["patients"] == 8 and report.stats["files"] == 8
    assert "0 error(s), 0 warning(s)" in report.format()


def test_every_problem_reported_at_once(tmp_path):
    d = tmp_path / "imgs"
    t2 = _smooth(2)
    _save(d / "t1.png", _smooth(1))
    _save(d / "t2.png", t2)
    _save(d / "t3.png", _smooth(3))
    shutil.copy(d / "t3.png", d / "t3_copy.png")  # same bytes, same split and label
    _save(d / "t4.png", _smooth(4))
    (d / "test").mkdir()
    shutil.copy(d / "t4.png", d / "test" / "t4_leak.png")  # same bytes in train and test
    _save(d / "t5.png", _smooth(5))
    shutil.copy(d / "t5.png", d / "t5_relabel.png")  # same bytes under A and B
    _save(d / "t6.png", _smooth(6))
    _save(d / "v1.png", _smooth(7))
    _save(d / "test" / "s1.jpg", t2, quality=90)  # t2 re-encoded: not byte-identical, near
    _save(d / "test" / "s2.png", _smooth(8))
    _save(d / "test" / "c1.png", _smooth(9))
    _save(d / "h1.png", _smooth(10))
    _save(d / "noise.png", np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    (d / "bad.png").write_bytes((d / "noise.png").read_bytes()[:2000])  # truncated
    (d / "fake.png").write_text("this is not a PNG")
    rows = [
        ("t1.png", "A", "train", "P1"), ("t2.png", "B", "train", "P2"), ("t3.png", "A", "train", "P3"),
        ("t3_copy.png", "A", "train", "P4"), ("t4.png", "B", "train", "P5"), ("t5.png", "A", "train", "P7"),
        ("t5_relabel.png", "B", "train", "P8"), ("t6.png", "", "train", "P11"),
        ("missing1.png", "A", "train", "P12"), ("missing2.png", "B", "train", "P13"),
        ("bad.png", "A", "train", "P14"), ("fake.png", "B", "train", "P15"),
        ("v1.png", "A", "val", "P1"),
        ("test/t4_leak.png", "B", "test", "P6"), ("test/s1.jpg", "B", "test", "P9"),
        ("test/s2.png", "A", "test", "P10"), ("test/c1.png", "C", "test", "P16"),
        ("h1.png", "A", "holdout", "P17"),
    ]
    report = validate(_manifest(d, rows))

    assert not report.ok
    assert sorted(report.errors) == sorted([
        "missing: missing1.png (line 10)",
        "missing: missing2.png (line 11)",
        "unreadable: bad.png (line 12): Truncated File Read",
        "unreadable: fake.png (line 13): not an image file Pillow can identify",
        "1 train row has no label (line 9)",
        "label 'C' is in test (1 row) but not in train: the model cannot predict it",
        "patient P1 is in train (1 row) and val (1 row)",
        "byte-identical images in test and train: t4.png [train/B], test/t4_leak.png [test/B]",
        "byte-identical images under labels A and B: t5.png [train/A], t5_relabel.png [train/B]",
    ]) or _explain(report)
    near = [w for w in report.warnings if w.startswith("near-duplicate")]
    assert len(near) == 1 and near[0].startswith("near-duplicate images in test and train (")
    assert near[0].endswith(" of 512 bits apart): test/s1.jpg [test/B], t2.png [train/B]"), near
    others = sorted(w for w in report.warnings if w not in near)
    assert others == sorted([
        "byte-identical images (2): t3.png [train/A], t3_copy.png [train/A]",
        "unknown split 'holdout' (1 row): stages select train, val, test, unlabeled by name",
        "val has a single class 'A': AUC is undefined on it",
    ])
    s = report.stats
    assert (s["missing"], s["unreadable"], s["exact_duplicate_groups"], s["near_duplicate_pairs"]) == (2, 2, 3, 1)
    assert s["exact_duplicate_groups_across_splits"] == 1 and s["exact_duplicate_groups_across_labels"] == 1
    text = report.format()
    assert all(e in text for e in report.errors) and "9 error(s), 4 warning(s)" in text
    assert "exact duplicates: 3 groups of byte-identical files" in text
    assert "test: 2 of 4 images have a copy in train (1 byte-identical, 1 near-duplicate)" in text
    short = report.format(limit=1)  # one line per kind: no kind hides another
    assert "missing: missing1.png (line 10)" in short and "missing: missing2.png" not in short
    assert "... and 1 more missing" in short and "unreadable: bad.png" in short


def _explain(report):
    raise AssertionError("\n".join(report.errors))


def test_unlabeled_pool_overlap_is_a_warning_only_for_evaluation_images(tmp_path):
    _save(tmp_path / "a.png", _smooth(1))
    _save(tmp_path / "b.png", _smooth(2))
    shutil.copy(tmp_path / "a.png", tmp_path / "a_pool.png")
    shutil.copy(tmp_path / "b.png", tmp_path / "b_pool.png")
    _save(tmp_path / "c.png", _smooth(3))
    _save(tmp_path / "d.png", _smooth(4))
    rows = [("a.png", "A", "train", "P1"), ("c.png", "B", "train", "P3"), ("a_pool.png", "", "unlabeled", "P1"),
            ("b.png", "A", "test", "P2"), ("d.png", "B", "test", "P4"), ("b_pool.png", "", "unlabeled", "P2")]
    report = validate(_manifest(tmp_path, rows))
    assert report.errors == []
    assert sorted(report.warnings) == [
        "byte-identical images in test and unlabeled: b.png [test/A], b_pool.png [unlabeled] "
        "(pretraining sees evaluation images; no labels leak)",
        "patient P2 is in test (1 row) and unlabeled (1 row) (pretraining sees evaluation images; no labels leak)",
    ]


def test_same_file_listed_twice(tmp_path):
    _save(tmp_path / "a.png", _smooth(1))
    _save(tmp_path / "b.png", _smooth(2))
    rows = [("a.png", "A", "train"), ("a.png", "A", "train"), ("b.png", "B", "train"), ("b.png", "A", "test")]
    report = validate(_manifest(tmp_path, rows, columns=("path", "label", "split")))
    assert "a.png is listed 2 times (lines 2, 3)" in report.warnings
    assert "b.png has rows in test, train (lines 4, 5)" in report.errors
    assert "b.png is listed 2 times with labels A, B (lines 4, 5)" in report.errors
    assert report.stats["exact_duplicate_groups"] == 0  # one file is not a duplicate of itself


def test_perceptual_hash_finds_copies_not_lookalikes():
    base = _smooth(1, size=96)

    def h(array, fmt="PNG", **kw):
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, fmt, **kw)
        buf.seek(0)
        return perceptual_hash(Image.open(buf))

    ref = h(base)
    assert ref.shape == (HASH_BITS // 8,) and ref.dtype == np.uint8
    noisy = np.clip(base + np.random.default_rng(0).normal(0, 3, base.shape), 0, 255).astype(np.uint8)
    copies = [h(base, "JPEG", quality=90), h(noisy), h(np.asarray(Image.fromarray(base).resize((40, 40)))),
              h(base.astype(np.uint16) * 257)]  # 16-bit: same picture, no clipping to 8 bits
    others = [h(_smooth(seed, size=96)) for seed in range(2, 12)]
    d_copies = hamming(ref[None], np.stack(copies))[0]
    d_others = hamming(ref[None], np.stack(others))[0]
    assert d_copies.max() <= NEAR_THRESHOLD, d_copies
    assert d_others.min() > 3 * NEAR_THRESHOLD, d_others
    assert hamming(np.stack(others), np.stack(others)).diagonal().max() == 0


def test_index_column_checked_against_frames_and_slices(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    nib = pytest.importorskip("nibabel")
    sc = Path(pydicom.__file__).parent / "data" / "test_files" / "SC_rgb_rle_2frame.dcm"
    if not sc.is_file():
        pytest.skip("pydicom test file not installed")
    shutil.copy(sc, tmp_path / "two_frames.dcm")
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), np.eye(4)), tmp_path / "vol.nii.gz")
    (tmp_path / "junk.dcm").write_bytes(b"\0" * 200)
    rows = [("two_frames.dcm", "A", "train", "0"), ("two_frames.dcm", "A", "train", "1"),
            ("two_frames.dcm", "A", "train", "2"), ("vol.nii.gz", "B", "train", "3"),
            ("vol.nii.gz", "B", "train", "4"), ("vol.nii.gz", "B", "train", "x"), ("junk.dcm", "B", "train", "")]
    report = validate(_manifest(tmp_path, rows, columns=("path", "label", "split", "index")))
    assert sorted(report.errors) == [
        "bad index: vol.nii.gz (line 7): index 'x' is not an integer",
        "unreadable: junk.dcm (line 8): not a DICOM file (no DICM marker and no image attributes)",
        "unreadable: two_frames.dcm (line 4): frame index 2 out of range: the file has 2 frames",
        "unreadable: vol.nii.gz (line 6): slice index 4 out of range: the volume has 4 slices along axis 2",
    ]
    assert report.stats["near_hashed"] == 0  # headers only: volumes are never decoded here


def test_unusable_manifests(tmp_path):
    assert validate(tmp_path / "absent.csv").errors == [f"manifest not found: {tmp_path / 'absent.csv'}"]
    _save(tmp_path / "a.png", _smooth(1))
    report = validate(_manifest(tmp_path, [("a.png",)], columns=("path",)))
    assert report.errors == [] and report.warnings[0].startswith("no 'split' column")


@pytest.mark.skipif(not CHEST_XRAY.is_dir(), reason="shared/data/chest_xray not present")
def test_chest_xray_exact_duplicates(tmp_path):
    """The real set: 30 groups of byte-identical JPEGs, all within one split; seconds on 2 cores."""
    manifest = tmp_path / "chest.csv"
    build.from_image_folder(CHEST_XRAY, manifest)
    start = time.perf_counter()
    report = validate(manifest)
    elapsed = time.perf_counter() - start
    s = report.stats
    print(f"chest_xray: {s['files']} files, {s['exact_duplicate_groups']} exact groups "
          f"({s['exact_duplicate_files']} files), {s['near_duplicate_pairs']} near pairs, {elapsed:.1f} s")
    assert report.errors == []
    assert s["files"] == 5840 and s["unreadable"] == 0
    assert s["exact_duplicate_groups"] == 30 and s["exact_duplicate_files"] == 62
    assert s["exact_duplicate_groups_across_splits"] == 0 and s["exact_duplicate_groups_across_labels"] == 0
    assert s["near_duplicate_pairs"] == 0
    assert elapsed < 60


def test_mixed_modes_and_header_only_mode(tmp_path):
    _save(tmp_path / "gray.png", _smooth(1))
    _save(tmp_path / "rgb.png", np.stack([_smooth(2)] * 3, axis=-1))
    _save(tmp_path / "gray2.png", _smooth(3))
    shutil.copy(tmp_path / "gray2.png", tmp_path / "gray2_copy.png")
    rows = [("gray.png", "A", "train"), ("rgb.png", "B", "train"), ("gray2.png", "A", "test"),
            ("gray2_copy.png", "A", "test")]
    manifest = _manifest(tmp_path, rows, columns=("path", "label", "split"))
    report = validate(manifest)
    assert any(w.startswith("images of mixed modes (A: L 3; B: RGB 1)") for w in report.warnings)
    assert report.stats["modes"] == {"A": {"L": 3}, "B": {"RGB": 1}}

    quick = validate(manifest, near_duplicates=False)  # headers only: no thumbnails, no near check
    assert "near_duplicate_pairs" not in quick.stats and quick.stats["exact_duplicate_groups"] == 1


# --- validate and the training data path agree --------------------------------------------------

def _undecodable_dicom() -> Path | None:
    """A pydicom test file whose compressed transfer syntax has no decoder installed here."""
    from pydicom.data import get_testdata_file
    from pydicom.pixels import get_decoder

    for name in ("MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_16.dcm", "MR_small_jp2klossless.dcm"):
        path = get_testdata_file(name, download=False)
        if path is None:
            continue
        import pydicom

        ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        if not get_decoder(ts).is_available:
            return Path(path)
    return None


def _corrupt_set(root: Path) -> tuple[Path, set[tuple[str, str]]]:
    """A train split of good rows and one row per kind of corrupt file; returns the manifest and
    the (path, index) of the corrupt rows."""
    pydicom = pytest.importorskip("pydicom")
    nib = pytest.importorskip("nibabel")
    from pydicom.data import get_testdata_file

    truncated = get_testdata_file("MR_truncated.dcm", download=False)
    if truncated is None:
        pytest.skip("pydicom's MR_truncated.dcm is not installed")
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(truncated, root / "truncated.dcm")
    shutil.copy(get_testdata_file("CT_small.dcm", download=False), root / "ct.dcm")
    np.savez(root / "stack.npz", images=np.zeros((3, 8, 8), np.uint8))
    (root / "text.png").write_text("a text file with a .png name\n" * 10)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(buf, "PNG")
    (root / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    Image.fromarray(_smooth(3)).save(buf, "JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    _save(root / "good.png", _smooth(1))
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((4, 5, 6), dtype=np.float32), np.eye(4)),
             root / "vol.nii.gz")
    rows = [("good.png", "A", ""), ("ct.dcm", "B", ""), ("stack.npz", "A", "2"), ("vol.nii.gz", "B", "5"),
            ("truncated.dcm", "A", ""), ("stack.npz", "B", "3"), ("text.png", "A", ""),
            ("truncated.png", "B", ""), ("truncated.jpg", "A", ""), ("vol.nii.gz", "A", "6")]
    bad = {("truncated.dcm", ""), ("stack.npz", "3"), ("text.png", ""), ("truncated.png", ""),
           ("truncated.jpg", ""), ("vol.nii.gz", "6")}
    undecodable = _undecodable_dicom()
    if undecodable is not None:
        shutil.copy(undecodable, root / "compressed.dcm")
        rows.append(("compressed.dcm", "B", ""))
        bad.add(("compressed.dcm", ""))
    manifest = _manifest(root, [(p, label, "train", i) for p, label, i in rows],
                         columns=("path", "label", "split", "index"))
    assert pydicom and len(bad) >= 6
    return manifest, bad


@pytest.mark.parametrize("near", [True, False])
def test_validate_and_load_rows_agree_row_by_row(tmp_path, near):
    from medalign.data.datasets import load_rows

    manifest, bad = _corrupt_set(tmp_path / "d")
    report = validate(manifest, near_duplicates=near)
    flagged = {(r["path"], r["index"]): r["detail"] for r in report.problem_rows()
               if r["kind"] in ("missing", "unreadable")}
    _, kept, skipped = load_rows(manifest, "train", on_error="skip")
    assert {(s["path"], s["index"]): s["reason"] for s in skipped} == flagged
    assert set(flagged) == bad
    assert {(r["path"], r["index"]) for r in kept} == {("good.png", ""), ("ct.dcm", ""), ("stack.npz", "2"),
                                                        ("vol.nii.gz", "5")}
    assert "truncated" in flagged[("truncated.dcm", "")] and "3 rows" in flagged[("stack.npz", "3")]
    if ("compressed.dcm", "") in flagged:
        assert "decoder" in flagged[("compressed.dcm", "")]


def test_manifest_that_is_not_text_is_one_line(tmp_path, capsys):
    from medalign import cli

    binary = tmp_path / "manifest.csv"
    buf = io.BytesIO()
    Image.fromarray(_smooth(1)).save(buf, "PNG")
    binary.write_bytes(buf.getvalue())
    report = validate(binary)
    assert len(report.errors) == 1 and str(binary) in report.errors[0] and "\n" not in report.errors[0]
    assert "UTF-8" in report.errors[0]
    (tmp_path / "nul.csv").write_bytes(b"path,label\na.png\0,A\n")
    assert "NUL" in validate(tmp_path / "nul.csv").errors[0]
    with pytest.raises(SystemExit) as e:
        cli.main(["manifest", "validate", str(binary)])
    assert e.value.code == 2 and "Traceback" not in capsys.readouterr().err


def _near_copy(a: np.ndarray, seed: int = 100, sigma: float = 10.0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, a.shape)
    return np.clip(a.astype(np.float64) + noise, 0, 255).astype(np.uint8)


def test_near_duplicates_under_different_labels_without_splits(tmp_path):
    a = _smooth(1)
    b = _near_copy(a)
    corr = np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1]
    assert 0.97 <= corr <= 0.99  # what real archives hold: one image filed under two diagnoses
    _save(tmp_path / "benign" / "x.png", a)
    _save(tmp_path / "malignant" / "x_again.png", b)
    _save(tmp_path / "benign" / "y.png", _smooth(2))
    _save(tmp_path / "malignant" / "z.png", _smooth(3))
    _save(tmp_path / "malignant" / "y_same_label.png", _near_copy(_smooth(4)))
    _save(tmp_path / "malignant" / "y_same_label_copy.png", _smooth(4))
    rows = [("benign/x.png", "benign"), ("malignant/x_again.png", "malignant"), ("benign/y.png", "benign"),
            ("malignant/z.png", "malignant"), ("malignant/y_same_label.png", "malignant"),
            ("malignant/y_same_label_copy.png", "malignant")]
    report = validate(_manifest(tmp_path, rows, columns=("path", "label")))
    near = [p for p in report.problems if p.kind == "near-duplicates under different labels"]
    assert len(near) == 1, report.format()
    assert near[0].message.startswith("near-duplicate images under labels benign and malignant (")
    assert near[0].message.endswith("): benign/x.png [benign], malignant/x_again.png [malignant]")
    assert {r["path"]: r["related"] for r in near[0].rows} == {"benign/x.png": "malignant/x_again.png",
                                                              "malignant/x_again.png": "benign/x.png"}
    assert report.stats["near_duplicate_pairs_across_labels"] == 1
    assert "near-duplicates: 0 pairs across splits, 1 pair under different labels" in report.format()


def test_test_images_with_a_copy_in_train_are_counted(tmp_path):
    for i in range(4):
        _save(tmp_path / f"train{i}.png", _smooth(i))
    shutil.copy(tmp_path / "train0.png", tmp_path / "test_exact.png")
    _save(tmp_path / "test_near.png", _near_copy(_smooth(1)))
    _save(tmp_path / "test_new1.png", _smooth(10))
    _save(tmp_path / "test_new2.png", _smooth(11))
    rows = [(f"train{i}.png", "AB"[i % 2], "train") for i in range(4)]
    rows += [("test_exact.png", "A", "test"), ("test_near.png", "B", "test"), ("test_new1.png", "A", "test"),
             ("test_new2.png", "B", "test"), ("train2.png", "A", "test")]  # the same file in both splits
    report = validate(_manifest(tmp_path, rows, columns=("path", "label", "split")))
    assert report.stats["copies_in_train"]["test"] == {"images": 3, "of": 5, "byte_identical": 2,
                                                       "near_duplicate": 1}
    assert "test: 3 of 5 images have a copy in train (2 byte-identical, 1 near-duplicate)" in report.format()
    quick = validate(_manifest(tmp_path, rows, columns=("path", "label", "split")), near_duplicates=False)
    assert quick.stats["copies_in_train"]["test"]["images"] == 2


def test_limit_is_per_kind(tmp_path):
    for i in range(3):
        (tmp_path / f"fake{i}.png").write_text(f"not an image, number {i}")
    rows = [(f"missing{i}.png", "A", "train") for i in range(3)] + [(f"fake{i}.png", "B", "train") for i in range(3)]
    report = validate(_manifest(tmp_path, rows, columns=("path", "label", "split")))
    text = report.format(limit=2)
    assert "missing: missing1.png" in text and "missing: missing2.png" not in text
    assert "unreadable: fake0.png" in text and "unreadable: fake1.png" in text and "fake2.png" not in text
    assert "... and 1 more missing" in text and "... and 1 more unreadable" in text
    assert all(f"missing{i}.png" in report.format() for i in range(3))


def test_cli_json_and_csv_reports(tmp_path, capsys):
    import json

    from medalign import cli

    for i in range(4):
        _save(tmp_path / f"t{i}.png", _smooth(i))
    shutil.copy(tmp_path / "t1.png", tmp_path / "leak.png")
    rows = [(f"t{i}.png", "AB"[i % 2], "train") for i in range(4)]
    rows += [("leak.png", "B", "test"), ("gone.png", "A", "test")]
    manifest = _manifest(tmp_path, rows, columns=("path", "label", "split"))
    problems = tmp_path / "out" / "problems.csv"
    with pytest.raises(SystemExit) as e:
        cli.main(["manifest", "validate", str(manifest), "--json", "--csv", str(problems)])
    assert e.value.code == 2
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and data["stats"]["rows"] == 6
    assert {p["kind"] for p in data["problems"]} >= {"missing", "byte-identical across splits"}
    with open(problems, newline="") as fh:
        got = list(csv.DictReader(fh))
    assert list(got[0]) == ["path", "index", "line", "split", "label", "kind", "severity", "detail", "related"]
    leak = [r for r in got if r["kind"] == "byte-identical across splits"]
    assert {(r["path"], r["split"], r["related"]) for r in leak} == {("t1.png", "train", "leak.png"),
                                                                    ("leak.png", "test", "t1.png")}
    assert [(r["path"], r["line"], r["severity"]) for r in got if r["kind"] == "missing"] == [("gone.png", "7", "error")]
    assert not list(problems.parent.glob(".*tmp"))
