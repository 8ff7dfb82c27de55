"""Manifests from what users already have: class folders, flat folders, DICOM trees, NIfTI
volumes, MedMNIST npz files, and label CSVs to join onto them.

Each builder writes one manifest CSV atomically (temp file + os.replace: a crash never leaves half a
manifest) and returns a report dict: `rows`, per-label/per-split `counts`, and `skipped` files with
a reason each. Real archives are messy (`.ipynb_checkpoints`, `.DS_Store`, README files, empty
exports, segmentation masks beside the images): builders skip and report those, they do not stop.
A problem the user must decide about (split folders mixed with class folders, folders named like
splits that are not recognised as such, no images at all) is a DataError. `concat` stacks
manifests built one folder at a time.

Paths are written relative to the manifest's folder (os.path.relpath), so a manifest can live
beside the data or anywhere else. No torch here; `medalign manifest build` wires these to the CLI.
"""
from __future__ import annotations

import csv
import io
import os
import re
import tempfile
import warnings
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath
from typing import Iterable

import numpy as np

from medalign.data.manifest import plural, read_manifest
from medalign.data.readers import has_dicm_magic
from medalign.errors import DataError, one_line

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Folder names (compared case-insensitively) that mean a split in the common root/<split>/<class>/
# layout, and their manifest name: Kaggle sets ship Training/Testing, others dev for validation.
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "dev": "val", "test": "test", "testing": "test"}
# What follows a split word in folder names like trainset, TestData, val_images: still a split.
_SPLIT_TAILS = ("", "set", "sets", "data", "images", "imgs", "split", "ds")
# Segmentation masks stored beside their images (BUSI: "benign (1)_mask.png", "..._mask_1.png").
MASK_NAME = re.compile(r"[_-](mask|seg|segmentation|label)s?([_-]?\d+)?$", re.IGNORECASE)
MASK_FOLDERS = {"mask", "masks"}
# Not hidden by a leading dot, but never data: macOS zip artefacts and Windows thumbnail caches.
JUNK_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini"}
# Suffixes that are surely not DICOM: files with these are not opened to look for the DICM magic.
NOT_DICOM = {".txt", ".md", ".csv", ".json", ".xml", ".html", ".pdf", ".py", ".yaml", ".yml", ".zip",
             ".gz", ".nii", ".npz", ".npy", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".log"}
# DICOM attributes written by from_dicom_tree, by manifest column. Only these are parsed
# (pydicom's specific_tags), so PatientName, PatientBirthDate & co are never even read.
DICOM_COLUMNS = {"patient_id": "PatientID", "study_id": "StudyInstanceUID", "series_id": "SeriesInstanceUID",
                 "modality": "Modality", "manufacturer": "Manufacturer", "body_part": "BodyPartExamined",
                 "view_position": "ViewPosition"}


# ---------------------------------------------------------------------------------------------
# folders of 2D images

def from_image_folder(root: str | Path, out_csv: str | Path, split: str | None = None) -> dict:
    """ImageFolder layout root/<class>/**/<image> -> rows path,label[,split].

    Also root/<split>/<class>/**: when the top-level folders are split names (`SPLIT_FOLDERS`, any
    case: train/training, val/valid/validation/dev, test/testing) they are splits, written as
    train/val/test. Top-level folders that only look like splits (train_set, TrainData) are refused
    rather than taken as classes. `split` gives every row that split in the class-only layout.
    Hidden and non-image files and segmentation masks (`MASK_NAME`, `MASK_FOLDERS`) are skipped and
    listed in the report.
    """
    root, out_csv = _existing_dir(root), Path(out_csv)
    skipped: list[dict] = []
    tops = _visible_dirs(root, root, skipped)
    _loose_files(root, root, skipped, out_csv)
    split_named = [d for d in tops if d.name.lower() in SPLIT_FOLDERS]
    if split_named and len(split_named) != len(tops):
        others = [d.name for d in tops if d not in split_named]
        raise DataError(f"{root}: has split folders ({', '.join(d.name for d in split_named)}) beside other "
                        f"folders ({', '.join(others)}); move those, or build from each split folder")
    split_like = [d.name for d in tops if not split_named and _looks_like_split(d.name)]
    if split_like:
        raise DataError(f"{root}: folder names {', '.join(split_like)} look like split names, not classes; "
                        f"rename them train/val/test, or build each with --split and join the manifests "
                        f"with `medalign manifest concat`")
    if split_named and split is not None:
        raise DataError(f"{root}: its folders are splits ({', '.join(d.name for d in split_named)}); "
                        f"split={split!r} applies only to a root/<class>/ layout")
    rows = []
    layout = [(d, SPLIT_FOLDERS[d.name.lower()]) for d in split_named] if split_named else [(root, split)]
    for split_dir, split_name in layout:
        if split_dir is not root:
            _loose_files(split_dir, root, skipped, out_csv)
        for class_dir in (_visible_dirs(split_dir, root, skipped) if split_dir is not root else tops):
            for f in _walk_files(class_dir, root, skipped, out_csv, masks=True):
                reason = _image_reason(f) or _mask_reason(f)
                if reason:
                    skipped.append(_skip(f, root, reason))
                    continue
                row = {"path": _rel(f, out_csv), "label": class_dir.name}
                if split_name is not None:
                    row["split"] = split_name
                rows.append(row)
    if not rows:
        raise DataError(f"{root}: no images found in class folders{_skip_summary(skipped)}")
    columns = ["path", "label"] + (["split"] if split_named or split is not None else [])
    report = _write_rows(out_csv, columns, rows, skipped)
    renamed = {d.name: SPLIT_FOLDERS[d.name.lower()] for d in split_named if d.name != SPLIT_FOLDERS[d.name.lower()]}
    report["layout"] = "root/<split>/<class>" if split_named else "root/<class>"
    if renamed:
        report["split_folders_renamed"] = renamed
    return report


def from_flat_folder(root: str | Path, out_csv: str | Path, split: str | None = "unlabeled") -> dict:
    """Every image under root (any depth), no labels: rows path[,split]. For pretraining pools."""
    root, out_csv = _existing_dir(root), Path(out_csv)
    skipped: list[dict] = []
    rows = []
    for f in _walk_files(root, root, skipped, out_csv, masks=True):
        reason = _image_reason(f) or _mask_reason(f)
        if reason:
            skipped.append(_skip(f, root, reason))
            continue
        rows.append({"path": _rel(f, out_csv)} | ({"split": split} if split else {}))
    if not rows:
        raise DataError(f"{root}: no images found{_skip_summary(skipped)}")
    return _write_rows(out_csv, ["path"] + (["split"] if split else []), rows, skipped)


# ---------------------------------------------------------------------------------------------
# DICOM

def from_dicom_tree(root: str | Path, out_csv: str | Path) -> dict:
    """One row per DICOM image file (by .dcm/.dicom suffix or the DICM magic), one per frame for
    multi-frame files (an `index` column, empty for single-frame files).

    Columns: path, patient_id, study_id, series_id, modality, manufacturer, body_part,
    view_position [, index]. Headers are read without pixel data, and only the attributes above
    (plus Rows/Columns/NumberOfFrames) are parsed: names and birth dates never reach the manifest.
    patient_id is the archive's PatientID as is: pseudonymise it before sharing a manifest.
    Files that are not DICOM, unreadable, or hold no image (DICOMDIR, structured reports) are skipped.
    """
    pydicom = _require("pydicom", "from_dicom_tree")
    root, out_csv = _existing_dir(root), Path(out_csv)
    skipped: list[dict] = []
    rows = []
    multiframe = 0
    tags = list(DICOM_COLUMNS.values()) + ["Rows", "Columns", "NumberOfFrames"]
    for f in _walk_files(root, root, skipped, out_csv):
        suffix = f.suffix.lower()
        magic = has_dicm_magic(f) if suffix not in NOT_DICOM else False
        if not magic and suffix not in DICOM_SUFFIXES:
            skipped.append(_skip(f, root, "not a DICOM file"))
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom warns on every odd VR; the row is what matters
                ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=tags, force=not magic)
                if "Rows" not in ds or "Columns" not in ds:
                    skipped.append(_skip(f, root, "DICOM without an image (no Rows/Columns)"))
                    continue
                frames = _n_frames(ds.get("NumberOfFrames"))
                meta = {col: _dicom_str(ds.get(kw)) for col, kw in DICOM_COLUMNS.items()}
        except Exception as e:  # noqa: BLE001 - any parse failure is a skipped file, never a crash
            skipped.append(_skip(f, root, f"unreadable DICOM: {one_line(e)}"))
            continue
        path = _rel(f, out_csv)
        if frames > 1:
            multiframe += 1
            rows += [{"path": path, **meta, "index": str(i)} for i in range(frames)]
        else:
            rows.append({"path": path, **meta, "index": ""})
    if not rows:
        raise DataError(f"{root}: no DICOM images found{_skip_summary(skipped)}")
    columns = ["path", *DICOM_COLUMNS] + (["index"] if multiframe else [])
    report = _write_rows(out_csv, columns, rows, skipped)
    report["files"] = len({r["path"] for r in rows})
    report["multiframe_files"] = multiframe
    report["patients"] = len({r["patient_id"] for r in rows if r["patient_id"]})
    report["modalities"] = dict(Counter(r["modality"] for r in rows))
    return report


def _n_frames(value) -> int:
    if value is None or str(value).strip() == "":
        return 1
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:  # '1A' & co: reported as an unreadable file
        raise ValueError(f"NumberOfFrames '{text}' is not a frame count")
    return int(text)


def _dicom_str(value) -> str:
    if value is None:
        return ""
    return " ".join(str(value).split())  # one line, even for multi-valued or padded attributes


# ---------------------------------------------------------------------------------------------
# NIfTI

def from_nifti(paths_or_root: str | Path | Iterable[str | Path], out_csv: str | Path, axis: int = 2,
               skip_empty: bool = True) -> dict:
    """One row per 2D slice of each NIfTI volume: path, index (the slice along `axis`).

    `paths_or_root` is a folder (searched for .nii/.nii.gz), one file, or a list of files. Slices
    whose max equals their min (blank padding, outside the field of view) are left out when
    skip_empty; the report counts them per volume. Volumes are read a chunk of slices at a time
    through nibabel's dataobj, never whole. An `axis` column is added when axis is not 2.
    """
    nib = _require("nibabel", "from_nifti")
    if axis not in (0, 1, 2):
        raise DataError(f"axis must be 0, 1 or 2 for 3D volumes, not {axis}")
    out_csv = Path(out_csv)
    skipped: list[dict] = []
    if isinstance(paths_or_root, (str, os.PathLike)) and Path(paths_or_root).is_dir():
        root, files = Path(paths_or_root), []
        for f in _walk_files(root, root, skipped, out_csv):
            if _is_nifti(f):
                files.append(f)
            else:
                skipped.append(_skip(f, root, "not a NIfTI file"))
    else:
        items = [paths_or_root] if isinstance(paths_or_root, (str, os.PathLike)) else list(paths_or_root)
        files, root = [Path(p) for p in items], None
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise DataError(f"{plural(len(missing), 'NIfTI file')} not found: {', '.join(missing[:10])}")
    rows, empty, volumes = [], {}, 0
    for f in files:
        where = f.relative_to(root).as_posix() if root else str(f)
        try:
            n_empty, keep = _nifti_slices(nib, f, axis, skip_empty)
        except Exception as e:  # noqa: BLE001 - a broken volume is reported, the others still count
            skipped.append({"path": where, "reason": f"unreadable NIfTI: {one_line(e)}"})
            continue
        if keep is None:
            skipped.append({"path": where, "reason": n_empty})
            continue
        volumes += 1
        if n_empty:
            empty[where] = n_empty
        path = _rel(f, out_csv)
        rows += [{"path": path, "index": str(k)} | ({"axis": str(axis)} if axis != 2 else {}) for k in keep]
    if not rows:
        raise DataError(f"no NIfTI slices to write{_skip_summary(skipped)}")
    report = _write_rows(out_csv, ["path", "index"] + (["axis"] if axis != 2 else []), rows, skipped)
    report["volumes"] = volumes
    report["empty_slices_skipped"] = sum(empty.values())
    report["empty_slices_by_volume"] = empty
    return report


def _nifti_slices(nib, path: Path, axis: int, skip_empty: bool):
    """(number of empty slices, kept slice indices) or (reason, None) for a volume that is not 3D."""
    img = nib.load(str(path))
    shape = tuple(img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        return f"{len(shape)}D volume {shape}: slicing needs 3D", None
    n = shape[axis]
    if not skip_empty:
        return 0, list(range(n))
    # Chunks of slices of at most ~64 MB as float64 (what scaled data can become): a 600-slice CT
    # is never in memory whole, and a .nii.gz is decompressed a few times, not once per slice.
    per_slice = 8 * int(np.prod(shape)) // max(n, 1)
    step = max(1, (64 << 20) // max(per_slice, 1))
    keep, n_empty = [], 0
    other = tuple(i for i in range(3) if i != axis)
    for k0 in range(0, n, step):
        sl = [slice(None)] * len(img.shape)
        sl[axis] = slice(k0, min(n, k0 + step))
        for i in range(3, len(img.shape)):
            sl[i] = 0
        chunk = np.asarray(img.dataobj[tuple(sl)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices count as empty
            hi, lo = np.nanmax(chunk, axis=other), np.nanmin(chunk, axis=other)
        for j, (h, l) in enumerate(zip(hi, lo)):
            if np.isnan(h) or h == l:
                n_empty += 1
            else:
                keep.append(k0 + j)
    return n_empty, keep


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


# ---------------------------------------------------------------------------------------------
# MedMNIST npz

def from_npz(npz_path: str | Path, out_dir: str | Path) -> dict:
    """A MedMNIST-style npz (train_images, train_labels, val_*, test_*) -> PNGs + manifest.

    Writes out_dir/images/{split}_{i:05d}.png (i: the image's index within its split in the npz)
    and out_dir/manifest.csv with path,label,split; labels as integer strings. Multi-label
    (ChestMNIST) and 3D (*MNIST3D) files are refused: a manifest label is one class of a 2D image.
    """
    from PIL import Image

    npz_path, out_dir = Path(npz_path), Path(out_dir)
    if not npz_path.is_file():
        raise DataError(f"npz file not found: {npz_path}")
    try:
        data = np.load(npz_path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot read {npz_path}: {one_line(e)}") from None
    with data:
        splits = [s for s in ("train", "val", "test") if f"{s}_images" in data.files]
        if not splits:
            raise DataError(f"{npz_path}: no train_images/val_images/test_images (keys: {', '.join(data.files)})")
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
        manifest = out_dir / "manifest.csv"
        rows = []
        for s in splits:
            images = data[f"{s}_images"]
            labels = _npz_labels(data, s, len(images), npz_path)
            if images.ndim == 4 and images.shape[-1] == 1:
                images = images[..., 0]
            if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
                raise DataError(f"{npz_path}: {s}_images has shape {images.shape}; expected (n, H, W) or "
                                f"(n, H, W, 3) 2D images")
            if images.dtype not in (np.uint8, np.uint16):
                raise DataError(f"{npz_path}: {s}_images is {images.dtype}; expected uint8 or uint16")
            for i, img in enumerate(images):
                name = f"images/{s}_{i:05d}.png"
                png = io.BytesIO()
                Image.fromarray(img).save(png, format="PNG")
                _write_if_changed(out_dir / name, png.getvalue())
                rows.append({"path": name, "label": labels[i], "split": s})
    return _write_rows(manifest, ["path", "label", "split"], rows, [])


def _write_if_changed(path: Path, data: bytes) -> None:
    """Leaves an identical file untouched: its mtime is part of the manifest's fingerprint, so a
    rebuild from the same npz keeps every cached stage valid. Otherwise writes atomically."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _npz_labels(data, split: str, n: int, npz_path: Path) -> list[str]:
    key = f"{split}_labels"
    if key not in data.files:
        return [""] * n
    labels = np.asarray(data[key])
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{npz_path}: {key} has shape {labels.shape}: multi-label data has no single "
                        f"class per image")
    if len(labels) != n:
        raise DataError(f"{npz_path}: {len(labels)} {key} for {n} {split}_images")
    return [str(int(v)) for v in labels]


# ---------------------------------------------------------------------------------------------
# joining labels from another CSV

KEY_CANDIDATES = ("path", "file", "filename", "file_name", "image", "image_path", "image_id", "fname")
# Manifest columns that readers act on (`index`: DICOM frame / NIfTI slice / npz row): a labels
# CSV's own `index` (PneumoniaMNIST's row number) must not become one, so it is always renamed.
RESERVED = {"path", "index", "axis"}


def join_csv(manifest_csv: str | Path, labels_csv: str | Path, out_csv: str | Path, on: str = "path",
             key_column: str | None = None, columns: list[str] | None = None,
             overwrite: Iterable[str] = ()) -> dict:
    """Adds columns of `labels_csv` to the manifest's rows, matched by file name.

    The manifest's `on` column (default `path`) is matched with the labels CSV's `key_column`
    (default: the first of `on`, path, file, filename, image, ... that it has) on the file's
    basename; when several manifest files share that basename, the one whose trailing folders
    match most of the key's folders wins, and a tie is reported as ambiguous (left unmatched).
    Any other `on` column (e.g. patient_id) is matched by equal value, one labels row to all
    manifest rows that have it.
    `columns`: which columns to add (default all but the key). A joined column whose name the
    manifest already has is added as `<name>_joined` and the two are compared (agreement,
    value pairs) in the report; names in `overwrite` replace the manifest's column instead
    (e.g. overwrite=["split"] to adopt an official split; unmatched rows then get an empty value).
    A manifest file matched by several labels rows keeps the first; the rest are reported.
    """
    manifest = read_manifest(manifest_csv)
    out_csv, labels_csv = Path(out_csv), Path(labels_csv)
    if on not in manifest.columns:
        raise DataError(f"manifest {manifest.path}: no column {on!r} to join on (columns: {list(manifest.columns)})")
    header, label_rows = _read_csv(labels_csv)
    if key_column is None:
        key_column = next((c for c in (on, *KEY_CANDIDATES) if c in header), None)
        if key_column is None:
            raise DataError(f"{labels_csv}: no key column found among {list(header)}; pass key_column=")
    elif key_column not in header:
        raise DataError(f"{labels_csv}: no column {key_column!r} (columns: {list(header)})")
    columns = [c for c in header if c != key_column] if columns is None else list(columns)
    unknown = [c for c in columns if c not in header]
    if unknown:
        raise DataError(f"{labels_csv}: no {'column' if len(unknown) == 1 else 'columns'} {unknown} "
                        f"(columns: {list(header)})")
    overwrite = set(overwrite)

    # match labels rows to manifest rows: files by name, other keys by value
    by_name: dict[str, list[int]] = defaultdict(list)
    parts = [_parts(r[on]) if on == "path" else (r[on],) for r in manifest.rows]
    for i, p in enumerate(parts):
        if p and p[-1]:
            by_name[p[-1]].append(i)
    match: dict[int, int] = {}  # manifest row -> first labels row
    extra: dict[int, list[int]] = defaultdict(list)  # manifest row -> later labels rows
    labels_unmatched, ambiguous, basename_only = [], {}, []
    for j, lrow in enumerate(label_rows):
        raw = (lrow.get(key_column) or "").strip()
        key = _parts(raw) if on == "path" else (raw,)
        cands = by_name.get(key[-1], []) if key else []
        if not cands:
            labels_unmatched.append(raw or f"(empty key, line {j + 2})")
            continue
        if on == "path":  # one file per labels row: the folders decide between equal basenames
            scores = [_common_suffix(parts[i], key) for i in cands]
            best = max(scores)
            cands = [i for i, s in zip(cands, scores) if s == best]
            if len(cands) > 1:
                ambiguous["/".join(key)] = [manifest.rows[i][on] for i in cands]
                continue
            if best < len(key):
                basename_only.append(f"{'/'.join(key)} -> {manifest.rows[cands[0]][on]}")
        for i in cands:  # other keys (patient_id): one labels row applies to all its images
            if i in match:
                extra[i].append(j)
            else:
                match[i] = j

    # output columns: clashes renamed, or replaced when asked
    out_names, clashes = {}, []
    taken = set(manifest.columns)
    for c in columns:
        name = c
        if (c in manifest.columns and c not in overwrite) or c in RESERVED:
            name, k = f"{c}_joined", 2
            while name in taken:
                name, k = f"{c}_joined{k}", k + 1
        if c in manifest.columns:
            clashes.append(c)
        taken.add(name)
        out_names[c] = name
    out_columns = list(manifest.columns) + [out_names[c] for c in columns if out_names[c] not in manifest.columns]

    rows = []
    for i, mrow in enumerate(manifest.rows):
        row = dict(mrow)
        row["path"] = rebase(mrow["path"], manifest.path, out_csv)
        lrow = label_rows[match[i]] if i in match else None
        for c in columns:
            row[out_names[c]] = (lrow.get(c) or "").strip() if lrow else ""
        rows.append(row)

    differ = {c: sum(any(label_rows[j].get(c) != label_rows[match[i]].get(c) for j in js) for i, js in extra.items())
              for c in columns}
    report = _write_rows(out_csv, out_columns, rows, [])
    unmatched_rows = [mrow[on] for i, mrow in enumerate(manifest.rows) if i not in match]
    report.update({
        "key": f"{on} <- {labels_csv.name}:{key_column}",
        "columns_joined": [out_names[c] for c in columns],
        "matched": len(match),
        "manifest_unmatched": _examples(unmatched_rows),
        "labels_unmatched": _examples(labels_unmatched),
        "ambiguous": _examples([f"{k}: {' | '.join(v)}" for k, v in ambiguous.items()]),
        "matched_by_basename_only": _examples(basename_only),
        "several_label_rows": {"files": len(extra), "rows_dropped": sum(map(len, extra.values())),
                               "files_whose_rows_differ": {out_names[c]: n for c, n in differ.items() if n},
                               "examples": [manifest.rows[i][on] for i in list(extra)[:10]]},
        "clashes": {c: _compare([manifest.rows[i].get(c, "") for i in match],
                                [(label_rows[j].get(c) or "").strip() for j in match.values()]) for c in clashes},
        "joined_counts": {out_names[c]: dict(Counter(r[out_names[c]] for r in rows))
                          for c in columns if len({r[out_names[c]] for r in rows}) <= 20},
    })
    return report


def _compare(mine: list[str], theirs: list[str]) -> dict:
    """How a manifest column and the joined column of the same name agree on matched rows.

    Same vocabulary (split vs split): a row disagrees when the values differ. Different
    vocabularies (NORMAL/PNEUMONIA vs 0/1): each manifest value maps to its most common joined
    value, and a row disagrees when it departs from that mapping.
    """
    pairs = Counter(zip(mine, theirs))
    if set(mine) & set(theirs):
        mode, disagree = "values differ", sum(n for (a, b), n in pairs.items() if a != b)
    else:
        top: dict[str, tuple[int, str]] = {}
        for (a, b), n in pairs.items():
            top[a] = max(top.get(a, (0, "")), (n, b))
        mode, disagree = "departs from the majority mapping", sum(
            n for (a, b), n in pairs.items() if b != top[a][1])
    return {"compared": len(mine), "disagree": disagree, "rule": mode,
            "pairs": {f"{a} -> {b}": n for (a, b), n in pairs.most_common(20)}}


def _parts(path: str) -> tuple[str, ...]:
    return tuple(p for p in path.strip().replace("\\", "/").split("/") if p not in ("", "."))


def _common_suffix(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise DataError(f"CSV not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: Excel's byte-order mark
        reader = csv.DictReader(fh)
        header = [h.strip() for h in reader.fieldnames or []]
        reader.fieldnames = header
        rows = list(reader)
    if not header:
        raise DataError(f"{path}: empty CSV")
    return header, rows


def rebase(path: str, old_manifest: Path, new_manifest: Path) -> str:
    """A manifest path, made relative to a manifest written in another folder."""
    if os.path.isabs(path) or old_manifest.resolve().parent == new_manifest.resolve().parent:
        return path
    return _rel(old_manifest.parent / path, new_manifest)


def select(manifest_csv: str | Path, out_csv: str | Path, column: str, value: str) -> Path:
    """The rows whose `column` is `value` (one scanner, one site), as a manifest of their own with
    paths re-based to its folder."""
    m, out_csv = read_manifest(manifest_csv), Path(out_csv)
    rows = [{**r, "path": rebase(r["path"], m.path, out_csv)} for r in m.rows if r.get(column) == value]
    if not rows:
        raise DataError(f"manifest {m.path}: no row has {column}={value}")
    write_csv(out_csv, list(m.columns), rows)
    return out_csv


# ---------------------------------------------------------------------------------------------
# stacking manifests

def concat(out_csv: str | Path, manifests: Iterable[str | Path], keep_first: bool = False) -> dict:
    """Stacks manifests (built folder by folder, site by site) into one, in the order given.

    Paths are re-based relative to `out_csv`'s folder; columns are the union, in order of first
    appearance, empty where a manifest lacks one. A row names an image by path, index and axis: the
    same image twice (paths compared after resolving, so `a/./x.png` is `a/x.png`) is refused, or with
    `keep_first` the first is kept and the others counted in the report (`duplicates`, with how
    many differ in another column, e.g. their label). Nothing is written when refused.
    """
    out_csv = Path(out_csv)
    columns: list[str] = []
    rows: list[dict] = []
    first: dict[tuple, tuple[str, dict]] = {}  # image -> where its first row came from, and that row
    dups: list[str] = []
    differing = 0
    sources = [read_manifest(p) for p in manifests]
    if not sources:
        raise DataError("concat needs at least one manifest")
    for m in sources:
        columns += [c for c in m.columns if c not in columns]
        for i, r in enumerate(m.rows):
            key = (m.image_path(r).resolve(), r.get("index", ""), r.get("axis", ""))
            where = f"{m.path} line {i + 2}"
            if key in first:
                was, row = first[key]
                dups.append(f"{r['path']}" + (f" index {key[1]}" if key[1] else "") + f" ({was} and {where})")
                differing += any(row.get(c, "") != v for c, v in r.items() if c != "path")
                continue
            first[key] = where, r
            rows.append(dict(r, path=rebase(r["path"], m.path, out_csv)))
    if dups and not keep_first:
        raise DataError(f"{plural(len(dups), 'duplicate row')} (the same path and index): {'; '.join(dups[:5])}"
                        + (f"; and {len(dups) - 5} more" if len(dups) > 5 else "")
                        + "; drop them, or keep the first of each (`--keep-first`)")
    report = _write_rows(out_csv, columns, [{c: r.get(c, "") for c in columns} for r in rows], [], sort=False)
    report["inputs"] = [str(m.path) for m in sources]
    report["duplicates"] = {"count": len(dups), "differing": differing, "examples": dups[:10]}
    return report


def _examples(items: list[str], n: int = 10) -> dict:
    return {"count": len(items), "examples": items[:n]}


# ---------------------------------------------------------------------------------------------
# shared helpers

def summarize(report: dict) -> str:
    """A few lines for a terminal: rows, counts, and what was skipped and why."""
    lines = [f"wrote {plural(report['rows'], 'row')} to {report['manifest']}"]
    for split, labels in report.get("counts", {}).items():
        if labels:
            lines.append(f"  {split or '(no split)'}: " + ", ".join(f"{k or '(none)'} {v}" for k, v in labels.items()))
    if "inputs" in report:
        lines[0] += f" from {plural(len(report['inputs']), 'manifest')}"
        dups = report["duplicates"]
        if dups["count"]:
            lines.append(f"  dropped {plural(dups['count'], 'duplicate row')} (same path and index), kept the "
                         f"first; {dups['differing']} of them differ in another column")
    if "matched" in report:
        lines.append(f"joined on {report['key']}: {report['matched']} rows matched; without a match: "
                     f"{report['manifest_unmatched']['count']} manifest rows, "
                     f"{report['labels_unmatched']['count']} label rows; ambiguous: {report['ambiguous']['count']}")
        several = report.get("several_label_rows") or {}
        if several.get("files"):
            lines.append(f"  {several['files']} files matched several label rows: kept the first, "
                         f"dropped {several['rows_dropped']}")
        for column, c in report.get("clashes", {}).items():
            lines.append(f"  {column}: {c['disagree']} of {c['compared']} disagree ({c['rule']})")
    skipped = report.get("skipped", [])
    if skipped:
        reasons = Counter(s["reason"] for s in skipped)
        lines.append(f"skipped {plural(len(skipped), 'file')}: "
                     + "; ".join(f"{r} ({n})" for r, n in reasons.most_common()))
        lines += [f"  {s['path']}: {s['reason']}" for s in skipped[:20]]
        if len(skipped) > 20:
            lines.append(f"  ... and {len(skipped) - 20} more")
    return "\n".join(lines)


def _write_rows(out_csv: Path, columns: list[str], rows: list[dict], skipped: list[dict], sort: bool = True) -> dict:
    if sort:
        rows = sorted(rows, key=lambda r: (r["path"], int(r["index"]) if r.get("index") else -1))
    write_csv(out_csv, columns, rows)
    counts: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        counts[r.get("split", "")][r.get("label", "")] += 1
    report = {"manifest": str(out_csv), "rows": len(rows),
              "counts": {s: dict(sorted(c.items())) for s, c in sorted(counts.items())}, "skipped": skipped}
    if "label" in columns:
        report["labels"] = dict(sorted(Counter(r["label"] for r in rows).items()))
    if "split" in columns:
        report["splits"] = dict(sorted(Counter(r["split"] for r in rows).items()))
    return report


def write_csv(out_csv: str | Path, columns: list[str], rows: list[dict]) -> None:
    """Writes a CSV atomically: a temp file in the same folder, then os.replace."""
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_csv.parent, prefix=f".{out_csv.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, out_csv)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _rel(path: Path, out_csv: Path) -> str:
    """path relative to the manifest's folder, with forward slashes on every OS."""
    try:
        rel = os.path.relpath(Path(path).resolve(), Path(out_csv).resolve().parent)
    except ValueError:  # another drive on Windows: no relative path exists
        return Path(path).resolve().as_posix()
    return PurePosixPath(*Path(rel).parts).as_posix()


def _existing_dir(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"folder not found: {root}")
    return root


def _hidden_reason(name: str) -> str | None:
    if name.startswith("."):
        return "hidden"
    if name in JUNK_NAMES:
        return "system"
    return None


def _visible_dirs(folder: Path, root: Path, skipped: list[dict]) -> list[Path]:
    """Subfolders; hidden ones and mask folders are skipped and reported once, with the number of
    files inside (a class folder is never named masks)."""
    out = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        reason = _hidden_reason(d.name) or _mask_folder_reason(d.name)
        if reason:
            skipped.append(_skip_dir(d, root, reason))
        else:
            out.append(d)
    return out


def _loose_files(folder: Path, root: Path, skipped: list[dict], out_csv: Path) -> None:
    """Files beside the class folders: reported, never labelled by guess."""
    for f in sorted(p for p in folder.iterdir() if not p.is_dir()):
        if f.resolve() != out_csv.resolve():
            reason = _hidden_reason(f.name)
            skipped.append(_skip(f, root, f"{reason} file" if reason else "not in a class folder"))


def _skip_dir(d: Path, root: Path, reason: str) -> dict:
    n = sum(len(fs) for _, _, fs in os.walk(d))
    return _skip(d, root, f"{reason} folder ({plural(n, 'file')})", folder=True)


def _walk_files(folder: Path, root: Path, skipped: list[dict], out_csv: Path | None = None,
                masks: bool = False) -> Iterable[Path]:
    """Files under folder in sorted order; hidden files and folders (and with `masks`, folders of
    segmentation masks) are reported, not descended."""
    out_resolved = Path(out_csv).resolve() if out_csv else None
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            reason = _hidden_reason(d) or (_mask_folder_reason(d) if masks else None)
            if reason:
                skipped.append(_skip_dir(here / d, root, reason))
            else:
                keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            f = here / name
            reason = _hidden_reason(name)
            if reason:
                skipped.append(_skip(f, root, f"{reason} file"))
            elif out_resolved is None or f.resolve() != out_resolved:
                yield f


def _image_reason(f: Path) -> str | None:
    """Why f is not a 2D image file for a manifest, or None when it is."""
    suffix = f.suffix.lower()
    try:
        size = f.stat().st_size
    except OSError as e:
        return f"cannot stat: {one_line(e)}"
    if size == 0:
        return "empty file (0 bytes)"
    if suffix in IMAGE_SUFFIXES:
        return None
    if _is_nifti(f):
        return "NIfTI volume: build its slices with from_nifti"
    if suffix not in NOT_DICOM and has_dicm_magic(f):
        return None
    return f"not an image ({suffix or 'no suffix'})"


def _looks_like_split(name: str) -> bool:
    """train_set, TrainData, Test-Images, validation2: a split word first, then at most a tail
    such as set/data/images. A class that merely contains one (covid_test_positive) is not."""
    words = re.findall(r"[a-z]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", name).lower())
    return bool(words) and any(words[0] == w + tail for w in SPLIT_FOLDERS for tail in _SPLIT_TAILS)


def _mask_reason(f: Path) -> str | None:
    stem = f.name[: -len(f.suffix)] if f.suffix else f.name
    m = MASK_NAME.search(stem)
    return f"segmentation mask ({m.group(0)} in the name), not an image" if m else None


def _mask_folder_reason(name: str) -> str | None:
    return "segmentation masks" if name.lower() in MASK_FOLDERS else None


def _skip(path: Path, root: Path, reason: str, folder: bool = False) -> dict:
    try:
        rel = Path(path).relative_to(root).as_posix()
    except ValueError:
        rel = str(path)
    return {"path": rel + ("/" if folder else ""), "reason": reason}


def _skip_summary(skipped: list[dict]) -> str:
    if not skipped:
        return ""
    reasons = Counter(s["reason"] for s in skipped)
    return f" (skipped {len(skipped)}: " + "; ".join(f"{r} x{n}" for r, n in reasons.most_common(5)) + ")"


def _require(module: str, what: str):
    try:
        return __import__(module)
    except ImportError:
        raise DataError(f"{what} needs {module}: pip install {module}") from None
