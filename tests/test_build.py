"""Tests for medalign.data.build: manifests from folders, DICOM trees, NIfTI, npz, and label joins."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medalign.data import build
from medalign.data.manifest import fingerprint, read_manifest
from medalign.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CHEST_XRAY = SHARED_DATA / "chest_xray"


def _img(path: Path, seed: int = 0, size: int = 8, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(a).save(path, fmt)
    return path


def _rows(csv_path: Path) -> list[dict]:
    with open(csv_path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _reasons(report: dict) -> dict[str, str]:
    return {s["path"]: s["reason"] for s in report["skipped"]}


# --- folders -----------------------------------------------------------------------------------

def test_image_folder_skips_hidden_and_non_image_files(tmp_path):
    root = tmp_path / "data"
    _img(root / "NORMAL" / "a.png", 1)
    _img(root / "NORMAL" / "b.JPG", 2, fmt="JPEG")
    _img(root / "NORMAL" / "scan2" / "c.png", 3)  # nested below the class folder: still NORMAL
    _img(root / "PNEUMONIA" / "d.jpeg", 4, fmt="JPEG")
    _img(root / "PNEUMONIA" / "e.tif", 5)
    _img(root / "NORMAL" / ".ipynb_checkpoints" / "a-checkpoint.png", 1)
    _img(root / ".ipynb_checkpoints" / "x.png", 6)
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "NORMAL" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "NORMAL" / "README.txt").write_text("exported from PACS")
    (root / "NORMAL" / "empty.png").write_bytes(b"")
    (root / "notes.md").write_text("loose file")
    (root / "__MACOSX").mkdir()

    out = tmp_path / "manifests" / "chest.csv"  # elsewhere: paths must be relative to it
    report = build.from_image_folder(root, out)

    rows = _rows(out)
    assert list(rows[0]) == ["path", "label"]
    assert [(Path(r["path"]).name, r["label"]) for r in rows] == [
        ("a.png", "NORMAL"), ("b.JPG", "NORMAL"), ("c.png", "NORMAL"), ("d.jpeg", "PNEUMONIA"), ("e.tif", "PNEUMONIA")]
    manifest = read_manifest(out)
    assert all(manifest.image_path(r).is_file() for r in manifest.rows)
    assert rows[0]["path"] == "../data/NORMAL/a.png"
    assert report["rows"] == 5 and report["labels"] == {"NORMAL": 3, "PNEUMONIA": 2}
    reasons = _reasons(report)
    assert reasons == {
        ".ipynb_checkpoints/": "hidden folder (1 file)",
        ".DS_Store": "hidden file",
        "notes.md": "not in a class folder",
        "__MACOSX/": "system folder (0 files)",
        "NORMAL/.ipynb_checkpoints/": "hidden folder (1 file)",
        "NORMAL/.DS_Store": "hidden file",
        "NORMAL/README.txt": "not an image (.txt)",
        "NORMAL/empty.png": "empty file (0 bytes)",
    }
    assert not list(out.parent.glob("*.tmp"))  # the atomic write leaves no temp file
    assert "skipped 8 files" in build.summarize(report)


def test_image_folder_detects_split_folders(tmp_path):
    root = tmp_path / "data"
    _img(root / "train" / "A" / "1.png", 1)
    _img(root / "train" / "B" / "2.png", 2)
    _img(root / "Valid" / "A" / "3.png", 3)
    _img(root / "test" / "B" / "4.png", 4)
    _img(root / "train" / "stray.png", 5)  # in a split folder but not in a class folder
    _img(root / "train" / ".ipynb_checkpoints" / "1-checkpoint.png", 1)

    out = root / "manifest.csv"
    report = build.from_image_folder(root, out)
    assert [(r["path"], r["label"], r["split"]) for r in _rows(out)] == [
        ("Valid/A/3.png", "A", "val"), ("test/B/4.png", "B", "test"),
        ("train/A/1.png", "A", "train"), ("train/B/2.png", "B", "train")]
    assert report["layout"] == "root/<split>/<class>"
    assert report["split_folders_renamed"] == {"Valid": "val"}
    assert report["counts"] == {"test": {"B": 1}, "train": {"A": 1, "B": 1}, "val": {"A": 1}}
    assert _reasons(report) == {"train/stray.png": "not in a class folder",
                                "train/.ipynb_checkpoints/": "hidden folder (1 file)"}

    again = build.from_image_folder(root, out)  # the manifest inside root is not an image to skip
    assert again["rows"] == 4 and "manifest.csv" not in _reasons(again)


def test_image_folder_split_argument_and_layout_errors(tmp_path):
    _img(tmp_path / "cls" / "A" / "1.png", 1)
    _img(tmp_path / "cls" / "B" / "2.png", 2)
    report = build.from_image_folder(tmp_path / "cls", tmp_path / "m.csv", split="train")
    assert report["splits"] == {"train": 2} and list(_rows(tmp_path / "m.csv")[0]) == ["path", "label", "split"]

    _img(tmp_path / "sp" / "train" / "A" / "1.png", 1)
    with pytest.raises(DataError, match="split='test' applies only"):
        build.from_image_folder(tmp_path / "sp", tmp_path / "m2.csv", split="test")
    _img(tmp_path / "sp" / "extra" / "2.png", 2)
    with pytest.raises(DataError, match=r"split folders \(train\) beside other folders \(extra\)"):
        build.from_image_folder(tmp_path / "sp", tmp_path / "m2.csv")
    (tmp_path / "none" / "A").mkdir(parents=True)
    (tmp_path / "none" / "A" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="no images found"):
        build.from_image_folder(tmp_path / "none", tmp_path / "m3.csv")
    with pytest.raises(DataError, match="folder not found"):
        build.from_image_folder(tmp_path / "absent", tmp_path / "m4.csv")
    assert not (tmp_path / "m2.csv").exists() and not (tmp_path / "m3.csv").exists()


def test_flat_folder(tmp_path):
    _img(tmp_path / "pool" / "a.png", 1)
    _img(tmp_path / "pool" / "deep" / "b.jpg", 2, fmt="JPEG")
    (tmp_path / "pool" / "Thumbs.db").write_bytes(b"x")
    (tmp_path / "pool" / "._a.png").write_bytes(b"AppleDouble")
    report = build.from_flat_folder(tmp_path / "pool", tmp_path / "pool.csv")
    assert _rows(tmp_path / "pool.csv") == [{"path": "pool/a.png", "split": "unlabeled"},
                                            {"path": "pool/deep/b.jpg", "split": "unlabeled"}]
    assert set(_reasons(report)) == {"Thumbs.db", "._a.png"}
    build.from_flat_folder(tmp_path / "pool", tmp_path / "bare.csv", split=None)
    assert list(_rows(tmp_path / "bare.csv")[0]) == ["path"]


# --- npz ---------------------------------------------------------------------------------------

def test_npz_export_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {f"{s}_images": rng.integers(0, 256, (n, 6, 7), dtype=np.uint8) for s, n in
              (("train", 5), ("val", 2), ("test", 3))}
    arrays |= {f"{s}_labels": rng.integers(0, 2, (len(arrays[f"{s}_images"]), 1)) for s in ("train", "val", "test")}
    np.savez(tmp_path / "tiny.npz", **arrays)

    report = build.from_npz(tmp_path / "tiny.npz", tmp_path / "out")
    assert report["rows"] == 10 and report["splits"] == {"test": 3, "train": 5, "val": 2}
    manifest = read_manifest(tmp_path / "out" / "manifest.csv")
    assert manifest.columns == ("path", "label", "split")
    for row in manifest.rows:
        split, i = row["split"], int(Path(row["path"]).stem.split("_")[1])
        assert row["path"] == f"images/{split}_{i:05d}.png"
        np.testing.assert_array_equal(np.asarray(Image.open(manifest.image_path(row))), arrays[f"{split}_images"][i])
        assert row["label"] == str(int(arrays[f"{split}_labels"][i, 0]))

    # a rebuild from the same npz leaves the manifest's fingerprint (and so every cached stage) alone
    before = fingerprint(tmp_path / "out" / "manifest.csv")
    build.from_npz(tmp_path / "tiny.npz", tmp_path / "out")
    assert fingerprint(tmp_path / "out" / "manifest.csv") == before
    arrays["train_images"][0] ^= 1
    np.savez(tmp_path / "tiny.npz", **arrays)
    build.from_npz(tmp_path / "tiny.npz", tmp_path / "out")
    assert fingerprint(tmp_path / "out" / "manifest.csv") != before

    np.savez(tmp_path / "multi.npz", train_images=arrays["train_images"], train_labels=np.zeros((5, 14), np.uint8))
    with pytest.raises(DataError, match="multi-label"):
        build.from_npz(tmp_path / "multi.npz", tmp_path / "out2")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(DataError, match="no train_images"):
        build.from_npz(tmp_path / "other.npz", tmp_path / "out3")


# --- join --------------------------------------------------------------------------------------

def test_join_matches_by_basename_then_folders(tmp_path):
    root = tmp_path / "data"
    for i, p in enumerate(["train/A/a1.png", "train/A/dup.png", "train/B/b1.png", "test/A/dup.png", "test/B/b2.png"]):
        _img(root / p, i)
    build.from_image_folder(root, root / "manifest.csv")
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "file,label,split,index,grade\n"
        "a1.png,0,train,0,low\n"            # basename, unique
        "train/B/b1.png,1,val,1,high\n"     # relative path
        "test/A/dup.png,0,test,2,low\n"     # dup.png twice in the manifest: the folders decide
        "dup.png,0,train,3,low\n"           # ambiguous: no folder to decide
        "nowhere.png,1,train,4,x\n"         # no such file
        "a1.png,1,val,5,high\n"             # a second row for a1.png: the first is kept
        "other/b2.png,1,test,6,high\n")     # folders differ, basename unique: matched, reported

    out = tmp_path / "joined" / "manifest.csv"
    report = build.join_csv(root / "manifest.csv", labels, out)

    rows = {r["path"]: r for r in _rows(out)}
    assert list(next(iter(rows.values()))) == ["path", "label", "split", "label_joined", "split_joined",
                                                "index_joined", "grade"]
    assert rows["../data/train/A/a1.png"] == {"path": "../data/train/A/a1.png", "label": "A", "split": "train",
                                                    "label_joined": "0", "split_joined": "train",
                                                    "index_joined": "0", "grade": "low"}
    assert rows["../data/test/A/dup.png"]["index_joined"] == "2"
    assert rows["../data/train/A/dup.png"]["grade"] == ""  # unmatched: empty joined columns
    assert rows["../data/test/B/b2.png"]["grade"] == "high"
    manifest = read_manifest(out)  # written elsewhere: paths were rebased
    assert all(manifest.image_path(r).is_file() for r in manifest.rows)

    assert report["matched"] == 4
    assert report["manifest_unmatched"] == {"count": 1, "examples": ["train/A/dup.png"]}
    assert report["labels_unmatched"] == {"count": 1, "examples": ["nowhere.png"]}
    assert report["ambiguous"] == {"count": 1, "examples": ["dup.png: test/A/dup.png | train/A/dup.png"]}
    assert report["matched_by_basename_only"]["examples"] == ["other/b2.png -> test/B/b2.png"]
    assert report["several_label_rows"]["files"] == 1 and report["several_label_rows"]["rows_dropped"] == 1
    assert report["several_label_rows"]["files_whose_rows_differ"] == {
        "label_joined": 1, "split_joined": 1, "index_joined": 1, "grade": 1}
    assert report["clashes"]["label"]["disagree"] == 0
    assert report["clashes"]["label"]["pairs"] == {"A -> 0": 2, "B -> 1": 2}
    assert report["clashes"]["split"]["disagree"] == 1  # b1.png: train in the folders, val in the CSV

    report = build.join_csv(root / "manifest.csv", labels, out, columns=["split"], overwrite=["split"])
    assert {r["path"].split("data/")[1]: r["split"] for r in _rows(out)} == {
        "train/A/a1.png": "train", "train/A/dup.png": "", "train/B/b1.png": "val", "test/A/dup.png": "test",
        "test/B/b2.png": "test"}
    assert report["splits"] == {"": 1, "test": 2, "train": 1, "val": 1}

    with pytest.raises(DataError, match="no column 'nope'"):
        build.join_csv(root / "manifest.csv", labels, out, key_column="nope")


# --- DICOM -------------------------------------------------------------------------------------

def _dicom_test_file(name: str) -> Path:
    pydicom = pytest.importorskip("pydicom")
    path = Path(pydicom.__file__).parent / "data" / "test_files" / name  # never the download cache
    if not path.is_file():
        pytest.skip(f"pydicom test file {name} not installed")
    return path


def test_dicom_tree_reads_headers_not_names(tmp_path):
    root = tmp_path / "pacs"
    (root / "p1" / "ct").mkdir(parents=True)
    (root / "p2").mkdir()
    shutil.copy(_dicom_test_file("CT_small.dcm"), root / "p1" / "ct" / "CT_small.dcm")
    shutil.copy(_dicom_test_file("MR_small.dcm"), root / "p2" / "MR_small.DCM")
    shutil.copy(_dicom_test_file("SC_rgb_rle_2frame.dcm"), root / "p2" / "IM0001")  # no suffix: DICM magic
    (root / "p2" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 40)
    (root / "p2" / "notes.txt").write_text("not DICOM")
    (root / ".hidden").mkdir()

    out = tmp_path / "dicom.csv"
    report = build.from_dicom_tree(root, out)

    text = out.read_text()
    for name in ("CompressedSamples", "Lestrade", "PatientName"):  # the test files' PatientNames
        assert name not in text
    rows = _rows(out)
    assert list(rows[0]) == ["path", "patient_id", "study_id", "series_id", "modality", "manufacturer",
                             "body_part", "view_position", "index"]
    got = [(r["path"].split("pacs/")[1], r["patient_id"], r["modality"], r["index"]) for r in rows]
    assert got == [("p1/ct/CT_small.dcm", "1CT1", "CT", ""), ("p2/IM0001", "ID1", "OT", "0"),
                   ("p2/IM0001", "ID1", "OT", "1"), ("p2/MR_small.DCM", "4MR1", "MR", "")]
    ct = rows[0]
    assert ct["manufacturer"] == "GE MEDICAL SYSTEMS" and ct["study_id"].startswith("1.3.6.1.4.1.5962")
    assert report["files"] == 3 and report["multiframe_files"] == 1 and report["patients"] == 3
    reasons = _reasons(report)
    assert reasons["p2/notes.txt"] == "not a DICOM file" and reasons[".hidden/"].startswith("hidden folder")
    assert reasons["p2/broken.dcm"].startswith(("unreadable DICOM", "DICOM without an image"))


# --- NIfTI -------------------------------------------------------------------------------------

def test_nifti_slices_skip_empty(tmp_path):
    nib = pytest.importorskip("nibabel")
    vol = np.random.default_rng(0).normal(size=(6, 5, 4)).astype(np.float32)
    vol[:, :, 1] = 0.0
    vol[:, :, 3] = 7.0  # constant but not zero: still empty
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 2, 2), np.int16), np.eye(4)), tmp_path / "fmri.nii")
    (tmp_path / "readme.txt").write_text("x")

    report = build.from_nifti(tmp_path, tmp_path / "out" / "slices.csv")
    assert _rows(tmp_path / "out" / "slices.csv") == [{"path": "../ct.nii.gz", "index": "0"},
                                                      {"path": "../ct.nii.gz", "index": "2"}]
    assert report["empty_slices_skipped"] == 2 and report["volumes"] == 1
    reasons = _reasons(report)
    assert reasons["fmri.nii"].startswith("4D volume") and reasons["readme.txt"] == "not a NIfTI file"

    report = build.from_nifti([tmp_path / "ct.nii.gz"], tmp_path / "all.csv", axis=0, skip_empty=False)
    rows = _rows(tmp_path / "all.csv")
    assert len(rows) == 6 and rows[5] == {"path": "ct.nii.gz", "index": "5", "axis": "0"}


# --- real data ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chest_manifest(tmp_path_factory):
    if not CHEST_XRAY.is_dir():
        pytest.skip(f"{CHEST_XRAY} not present")
    out = tmp_path_factory.mktemp("chest") / "manifest.csv"
    return out, build.from_image_folder(CHEST_XRAY, out)


def test_chest_xray_image_folder(chest_manifest):
    out, report = chest_manifest
    assert report["rows"] == 5840 and report["layout"] == "root/<split>/<class>"
    assert report["counts"] == {"test": {"NORMAL": 234, "PNEUMONIA": 390},
                                "train": {"NORMAL": 1341, "PNEUMONIA": 3875}}
    assert _reasons(report) == {"pneumoniamnist_split.csv": "not in a class folder"}


def test_chest_xray_join_official_split(chest_manifest, tmp_path):
    out, _ = chest_manifest
    split_csv = CHEST_XRAY / "pneumoniamnist_split.csv"
    report = build.join_csv(out, split_csv, tmp_path / "joined.csv")

    official = Counter(r["split"] for r in _rows(split_csv))
    assert official == {"train": 4708, "val": 524, "test": 624}
    # PneumoniaMNIST has images made from the same file (the set's own duplicates): one row per file
    # keeps the first; every official row is either joined or counted as dropped.
    seen, dropped = set(), Counter()
    for r in _rows(split_csv):
        if r["file"] in seen:
            dropped[r["split"]] += 1
        seen.add(r["file"])
    joined = report["joined_counts"]["split_joined"]
    assert {s: joined[s] + dropped[s] for s in official} == official
    assert report["labels_unmatched"]["count"] == 0 and report["ambiguous"]["count"] == 0
    assert report["matched"] + report["manifest_unmatched"]["count"] == 5840
    assert report["several_label_rows"]["rows_dropped"] == sum(dropped.values())
    assert report["clashes"]["label"]["pairs"]["NORMAL -> 0"] > 1000


def test_join_on_patient_id_applies_to_every_image(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("path,patient_id\na.png,P1\nb.png,P1\nc.png,P2\nd.png,\n")
    labels = tmp_path / "patients.csv"
    labels.write_text("patient_id,site\nP1,north\nP3,south\n")
    report = build.join_csv(m, labels, tmp_path / "out.csv", on="patient_id")
    assert [r["site"] for r in _rows(tmp_path / "out.csv")] == ["north", "north", "", ""]
    assert report["matched"] == 2 and report["labels_unmatched"]["examples"] == ["P3"]
    assert report["ambiguous"]["count"] == 0


# --- split folders, segmentation masks ---------------------------------------------------------

def test_training_testing_folders_are_splits_not_labels(tmp_path):
    root = tmp_path / "brain"
    for split, n in (("Training", 2), ("Testing", 1), ("DEV", 1)):
        for label in ("glioma", "meningioma"):
            for i in range(n):
                _img(root / split / label / f"{i}.jpg", i, fmt="JPEG")
    report = build.from_image_folder(root, tmp_path / "m.csv")
    assert report["counts"] == {"test": {"glioma": 1, "meningioma": 1}, "train": {"glioma": 2, "meningioma": 2},
                                "val": {"glioma": 1, "meningioma": 1}}
    assert report["split_folders_renamed"] == {"DEV": "val", "Testing": "test", "Training": "train"}
    assert {r["label"] for r in _rows(tmp_path / "m.csv")} == {"glioma", "meningioma"}


@pytest.mark.parametrize("names", [("train_set", "test_set"), ("TrainData", "TestData"), ("NORMAL", "trainset2")])
def test_split_like_folder_names_are_refused(tmp_path, names):
    for i, name in enumerate(names):
        _img(tmp_path / "data" / name / "A" / f"{i}.png", i)
        _img(tmp_path / "data" / name / f"{i}.png", i)
    with pytest.raises(DataError) as e:
        build.from_image_folder(tmp_path / "data", tmp_path / "m.csv")
    message = str(e.value)
    assert "look like split names" in message and "\n" not in message
    assert all(n in message for n in names if n != "NORMAL") and "NORMAL" not in message
    assert not (tmp_path / "m.csv").exists()


def test_class_names_that_merely_contain_a_split_word_are_classes(tmp_path):
    _img(tmp_path / "data" / "covid_test_positive" / "1.png", 1)
    _img(tmp_path / "data" / "Testicular" / "2.png", 2)
    report = build.from_image_folder(tmp_path / "data", tmp_path / "m.csv")
    assert report["labels"] == {"Testicular": 1, "covid_test_positive": 1}


def test_segmentation_masks_beside_images_are_skipped(tmp_path):
    root = tmp_path / "busi"
    _img(root / "benign" / "benign (1).png", 1)
    _img(root / "benign" / "benign (1)_mask.png", 2)
    _img(root / "benign" / "benign (1)_mask_1.png", 3)
    _img(root / "malignant" / "m1.png", 4)
    _img(root / "malignant" / "m1_seg.png", 5)
    _img(root / "malignant" / "m1-label.png", 6)
    _img(root / "malignant" / "masks" / "m1.png", 7)
    _img(root / "masks" / "x.png", 8)  # a top-level masks folder is not a class
    report = build.from_image_folder(root, tmp_path / "m.csv")
    assert [(Path(r["path"]).name, r["label"]) for r in _rows(tmp_path / "m.csv")] == [
        ("benign (1).png", "benign"), ("m1.png", "malignant")]
    reasons = _reasons(report)
    assert reasons == {
        "benign/benign (1)_mask.png": "segmentation mask (_mask in the name), not an image",
        "benign/benign (1)_mask_1.png": "segmentation mask (_mask_1 in the name), not an image",
        "malignant/m1_seg.png": "segmentation mask (_seg in the name), not an image",
        "malignant/m1-label.png": "segmentation mask (-label in the name), not an image",
        "malignant/masks/": "segmentation masks folder (1 file)",
        "masks/": "segmentation masks folder (1 file)",
    }
    flat = build.from_flat_folder(root, tmp_path / "flat.csv")
    assert flat["rows"] == 2 and _reasons(flat)["masks/"] == "segmentation masks folder (1 file)"


# --- concat ------------------------------------------------------------------------------------

def test_concat_rebases_unions_columns_and_refuses_duplicates(tmp_path, capsys):
    from medalign import cli

    _img(tmp_path / "site1" / "A" / "a.png", 1)
    _img(tmp_path / "site1" / "B" / "b.png", 2)
    _img(tmp_path / "site2" / "pool" / "c.png", 3)
    build.from_image_folder(tmp_path / "site1", tmp_path / "site1" / "m.csv", split="train")
    build.from_flat_folder(tmp_path / "site2", tmp_path / "site2" / "m.csv")
    (tmp_path / "site2" / "m.csv").write_text("path,split,site\npool/c.png,unlabeled,north\n")
    out = tmp_path / "all" / "manifest.csv"
    cli.main(["manifest", "concat", str(out), str(tmp_path / "site1" / "m.csv"), str(tmp_path / "site2" / "m.csv")])
    assert "wrote 3 rows" in capsys.readouterr().out
    rows = _rows(out)
    assert list(rows[0]) == ["path", "label", "split", "site"]
    assert rows == [{"path": "../site1/A/a.png", "label": "A", "split": "train", "site": ""},
                    {"path": "../site1/B/b.png", "label": "B", "split": "train", "site": ""},
                    {"path": "../site2/pool/c.png", "label": "", "split": "unlabeled", "site": "north"}]
    manifest = read_manifest(out)
    assert all(manifest.image_path(r).is_file() for r in manifest.rows)

    # the same image twice (written differently): refused, nothing written
    (tmp_path / "again.csv").write_text("path,label,split\nsite1/./A/a.png,B,test\n")
    with pytest.raises(SystemExit) as e:
        cli.main(["manifest", "concat", str(tmp_path / "dup.csv"), str(tmp_path / "site1" / "m.csv"),
                  str(tmp_path / "again.csv")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "1 duplicate row" in err and "A/a.png" in err and "\n" not in err.strip()
    assert not (tmp_path / "dup.csv").exists() and not list(tmp_path.glob(".dup.csv*"))
    report = build.concat(tmp_path / "dup.csv", [tmp_path / "site1" / "m.csv", tmp_path / "again.csv"],
                          keep_first=True)
    assert report["rows"] == 2 and report["duplicates"]["count"] == 1 and report["duplicates"]["differing"] == 1
    assert [r["label"] for r in _rows(tmp_path / "dup.csv")] == ["A", "B"]
    with pytest.raises(DataError, match="manifest not found"):
        build.concat(tmp_path / "x.csv", [tmp_path / "site1" / "m.csv", tmp_path / "absent.csv"])
