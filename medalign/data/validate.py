"""Every problem of a manifest at once, before hours of training.

`validate(manifest)` returns a Report: errors (training on this would be wrong or would fail),
warnings (worth a look), and stats (rows, per-split class counts, duplicate counts, timings).

Checks: missing and unreadable files; labeled splits (train/val/test) with empty labels; labels
in val/test that train lacks; unknown split names; one patient in two splits; byte-identical
images within a split, across splits, or under two labels; near-duplicates across splits.

Each file is read once: the same bytes give the sha256 (exact duplicates) and, for 2D images, a
small grayscale thumbnail (readability and the perceptual hash). DICOM and NIfTI files are checked
by their headers (frame/slice counts against the `index` column), never decoded, so they take part
in the exact-duplicate check only. A re-encoded copy (a JPEG re-saved, a PNG of a JPEG) differs in
its bytes, so the exact check cannot see it: the near-duplicate check is there for those.

Splits: `train`, `val`, `test` are labeled, `unlabeled` is the pretraining pool. An image or
patient in two labeled splits is a leak (error). The pool overlapping train is normal (no
message); the pool holding val/test images is a warning: no labels leak, but pretraining has seen
the images the evaluation is about.
"""
from __future__ import annotations

import hashlib
import io
import os
import time
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from medalign.data.manifest import Manifest, patient_splits, read_manifest
from medalign.data.readers import has_dicm_magic
from medalign.errors import DataError, one_line

LABELED = ("train", "val", "test")
KNOWN_SPLITS = (*LABELED, "unlabeled")
# Perceptual hash: 256-bit average hash + 256-bit difference hash, 512 bits in all. Measured on
# shared/data/chest_xray (5,840 chest X-rays, 224 px): the closest two distinct images differ in
# 27 bits, while one image re-saved as JPEG q90 or q50, as PNG, resized to 128 or 512 px, with
# Gaussian noise (sigma 5 of 255) or contrast x1.1 moves at most 18 bits (mostly under 10). 20
# sits between the two. Chest X-rays all look alike at 16x16, so other data separates at least as
# well; BreastMNIST (BUSI) has real near-copies 2-30 bits apart, found by raising the threshold.
NEAR_THRESHOLD = 20
HASH_BITS = 512
_STREAM_ABOVE = 64 << 20  # volumes above this are hashed in chunks, not read into memory at once
_NIFTI = (".nii", ".nii.gz")
_DICOM = (".dcm", ".dicom")


@dataclass
class Report:
    manifest: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self, limit: int | None = None) -> str:
        """A printable report: summary, then each problem on one line (`limit` per kind)."""
        s = self.stats
        lines = [f"{self.manifest}: {s.get('rows', 0)} rows, {s.get('files', 0)} files"]
        for split, labels in s.get("class_counts", {}).items():
            counts = ", ".join(f"{k or '(no label)'} {v}" for k, v in labels.items())
            lines.append(f"  {split or '(no split)'}: {sum(labels.values())} rows ({counts})")
        if "exact_duplicate_groups" in s:
            lines.append(f"  exact duplicates: {s['exact_duplicate_groups']} groups of byte-identical files")
        if "near_duplicate_pairs" in s:
            lines.append(f"  near duplicates across splits: {s['near_duplicate_pairs']} pairs "
                         f"(within {s['near_threshold']} of {HASH_BITS} bits)")
        for kind, items in (("error", self.errors), ("warning", self.warnings)):
            shown = items if limit is None else items[:limit]
            lines += [f"{kind}: {m}" for m in shown]
            if len(items) > len(shown):
                lines.append(f"... and {len(items) - len(shown)} more {kind}s")
        lines.append(f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)"
                     + (f" in {s['seconds']['total']:.1f} s" if "seconds" in s else ""))
        return "\n".join(lines)


@dataclass
class _File:
    path: str
    sha256: str | None = None
    phash: np.ndarray | None = None
    error: str | None = None  # "missing" or why it cannot be read
    mode: str | None = None
    n_index: int | None = None  # frames of a DICOM / pages of a TIFF: valid `index` values
    shape: tuple | None = None  # a NIfTI volume's shape


def validate(manifest_path: str | Path, near_duplicates: bool = True, near_threshold: int = NEAR_THRESHOLD,
             workers: int | None = None) -> Report:
    """Checks a manifest and every file it names; never raises for bad data, reports it.

    near_duplicates=False skips thumbnails and the perceptual comparison (images are then only
    opened with Pillow's verify, which does not decode JPEG data). `workers` threads read files
    (Pillow and hashlib release the GIL); default: one per core, at most 8.
    """
    t0 = time.perf_counter()
    report = Report(str(manifest_path))
    try:
        m = read_manifest(manifest_path)
    except DataError as e:
        report.errors.append(str(e))
        return report
    rows = m.rows
    report.stats.update(rows=len(rows), columns=list(m.columns))
    _check_splits_and_labels(m, report)
    _check_patients(m, report)
    _check_repeated_rows(m, report)

    paths = list(dict.fromkeys(r["path"] for r in rows))  # unique, in manifest order
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        files = dict(zip(paths, pool.map(lambda p: _scan(m.root / p, p, near_duplicates), paths)))
    t_read = time.perf_counter()
    report.stats["files"] = len(files)
    _check_files(m, files, report)

    rows_of: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        rows_of[r["path"]].append(i)
    _check_exact_duplicates(m, files, rows_of, report)
    if near_duplicates:
        _check_near_duplicates(m, files, rows_of, near_threshold, report)
    t_end = time.perf_counter()
    report.stats["seconds"] = {"read": round(t_read - t0, 3), "compare": round(t_end - t_read, 3),
                               "total": round(t_end - t0, 3)}
    return report


# ---------------------------------------------------------------------------------------------
# rows

def _check_splits_and_labels(m: Manifest, report: Report) -> None:
    cols, rows = set(m.columns), m.rows
    counts: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        counts[r.get("split", "")][r.get("label", "")] += 1
    report.stats["splits"] = {s: sum(c.values()) for s, c in sorted(counts.items())}
    report.stats["class_counts"] = {s: dict(sorted(c.items())) for s, c in sorted(counts.items())}
    if "split" not in cols:
        report.warnings.append("no 'split' column: stages cannot select rows (add train/val/test/unlabeled)")
        return
    for split in sorted(s for s in counts if s not in KNOWN_SPLITS):
        if split:
            report.warnings.append(f"unknown split '{split}' ({sum(counts[split].values())} rows): stages "
                                   f"select {', '.join(KNOWN_SPLITS)} by name")
        else:
            lines = [i + 2 for i, r in enumerate(rows) if not r["split"]]
            report.warnings.append(f"{len(lines)} rows have no split, so no stage uses them (lines {_ranges(lines)})")
    labeled = [s for s in LABELED if s in counts]
    if "label" not in cols:
        if labeled:
            report.warnings.append(f"no 'label' column: {'/'.join(labeled)} rows can only be used for pretraining")
        return
    for split in labeled:
        lines = [i + 2 for i, r in enumerate(rows) if r["split"] == split and not r["label"]]
        if lines:
            report.errors.append(f"{len(lines)} {split} rows have no label (lines {_ranges(lines)})")
    train = {k for k in counts.get("train", {}) if k}
    if "train" in counts:
        if len(train) < 2:
            report.errors.append(f"train has {len(train)} class(es) {sorted(train)}: training needs at least 2")
        for split in ("val", "test"):
            for label, n in sorted(counts.get(split, {}).items()):
                if label and label not in train:
                    report.errors.append(f"label '{label}' is in {split} ({n} rows) but not in train: the model "
                                         f"cannot predict it")
    for split in ("val", "test"):
        present = [k for k in counts.get(split, {}) if k]
        if len(present) == 1:
            report.warnings.append(f"{split} has a single class '{present[0]}': AUC is undefined on it")


def _check_patients(m: Manifest, report: Report) -> None:
    if "patient_id" not in m.columns or "split" not in m.columns:
        return
    splits_of = patient_splits(m)
    report.stats["patients"] = len(splits_of)
    for pid, splits in splits_of.items():
        kind = _leak(set(splits))
        if kind:
            where = " and ".join(f"{s} ({n} rows)" for s, n in sorted(splits.items()))
            _add(report, kind, f"patient {pid} is in {where}" + _leak_note(kind))


def _check_repeated_rows(m: Manifest, report: Report) -> None:
    """The same file (or frame) listed more than once."""
    by_path: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(m.rows):
        by_path[r["path"]].append(i)
    for path, idx in by_path.items():
        if len(idx) < 2:
            continue
        kind = _leak({m.rows[i].get("split", "") for i in idx})
        if kind:
            where = ", ".join(sorted({m.rows[i]["split"] for i in idx if m.rows[i]["split"]}))
            _add(report, kind, f"{path} has rows in {where} (lines {_ranges([i + 2 for i in idx])})" + _leak_note(kind))
        same: dict[str, list[int]] = defaultdict(list)
        for i in idx:
            same[m.rows[i].get("index", "")].append(i)
        for index, rep in same.items():
            if len(rep) < 2:
                continue
            what = path + (f" index {index}" if index else "")
            labels = sorted({m.rows[i].get("label", "") for i in rep})
            if len(labels) > 1:
                report.errors.append(f"{what} is listed {len(rep)} times with labels {', '.join(labels)} "
                                     f"(lines {_ranges([i + 2 for i in rep])})")
            elif not kind:
                report.warnings.append(f"{what} is listed {len(rep)} times (lines {_ranges([i + 2 for i in rep])})")


# ---------------------------------------------------------------------------------------------
# files

def _scan(full: Path, path: str, thumbnail: bool) -> _File:
    """Reads one file once: sha256, header check, and for 2D images the perceptual hash."""
    f = _File(path)
    try:
        if not full.is_file():
            f.error = "missing"
            return f
        name = full.name.lower()
        if name.endswith(_NIFTI) or full.stat().st_size > _STREAM_ABOVE:
            f.sha256 = _sha256_stream(full)
            data = None
        else:
            data = full.read_bytes()
            f.sha256 = hashlib.sha256(data).hexdigest()
        if name.endswith(_NIFTI):
            import nibabel

            f.shape = tuple(nibabel.load(str(full)).shape)  # the header only; pixels stay on disk
        elif name.endswith(_DICOM) or _dicm(full, data):
            _check_dicom(f, full, data)
        elif name.endswith((".npz", ".npy")):
            arr = np.load(io.BytesIO(data) if data is not None else full, allow_pickle=False)
            f.n_index = len(arr) if isinstance(arr, np.ndarray) and arr.ndim > 2 else None
        else:
            with Image.open(io.BytesIO(data) if data is not None else full) as im:
                f.mode, f.n_index = im.mode, getattr(im, "n_frames", 1)
                if thumbnail:
                    f.phash = perceptual_hash(im)  # decodes the pixels: a truncated file fails here
                else:
                    im.verify()
    except Exception as e:  # noqa: BLE001 - every unreadable file is reported, the rest still checked
        f.error = one_line(e)
    return f


def _check_dicom(f: _File, full: Path, data: bytes | None) -> None:
    import pydicom

    src = io.BytesIO(data) if data is not None else full
    magic = _dicm(full, data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(src, stop_before_pixels=True, force=not magic,
                             specific_tags=["Rows", "Columns", "NumberOfFrames"])
    if "Rows" not in ds or "Columns" not in ds:
        raise DataError("DICOM without an image (no Rows/Columns)")
    frames = str(ds.get("NumberOfFrames") or "1").strip()
    if not frames.isdigit():
        raise DataError(f"NumberOfFrames '{frames}' is not a frame count")
    f.n_index = int(frames)


def _dicm(full: Path, data: bytes | None) -> bool:
    return data[128:132] == b"DICM" if data is not None else has_dicm_magic(full)


def _sha256_stream(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def perceptual_hash(im: Image.Image) -> np.ndarray:
    """512-bit hash of an image's coarse look: 64 uint8 (average hash + difference hash, 16x16).

    Written here rather than taken from `imagehash`: it is ten lines, and the dependency would be
    one more package for hospitals to vet. The average hash (pixel above the mean) survives
    re-encoding, noise and resizing; the difference hash (pixel brighter than its right neighbour)
    tells apart images with the same overall layout, which chest X-rays all share. Both ignore
    brightness and contrast shifts. BOX (area) downsampling through 64 px keeps the thumbnail the
    same whether a file was stored at 224 or 1024 px; JPEGs are decoded at reduced scale (draft),
    never below 128 px, so a 3000 px radiograph costs little.
    """
    if im.format == "JPEG":
        im.draft("L", (128, 128))
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        g = Image.fromarray(np.asarray(im, dtype=np.float32))  # 16-bit: keep the range, no clipping to 8 bits
    else:
        g = im.convert("L")
    if max(g.size) > 64:
        g = g.resize((64, 64), Image.Resampling.BOX)
    avg = np.asarray(g.resize((16, 16), Image.Resampling.BOX), dtype=np.float32)
    dif = np.asarray(g.resize((17, 16), Image.Resampling.BOX), dtype=np.float32)
    return np.concatenate([np.packbits(avg > avg.mean()), np.packbits(dif[:, 1:] > dif[:, :-1])])


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distances between every hash of a (n, 64) and every hash of b (k, 64): (n, k)."""
    return _popcount(a[:, None, :] ^ b[None, :, :])


def _check_files(m: Manifest, files: dict[str, _File], report: Report) -> None:
    first_line = {}
    for i, r in enumerate(m.rows):
        first_line.setdefault(r["path"], i + 2)
    missing = [f for f in files.values() if f.error == "missing"]
    unreadable = [f for f in files.values() if f.error and f.error != "missing"]
    report.errors += [f"missing: {f.path} (line {first_line[f.path]})" for f in missing]
    report.errors += [f"unreadable: {f.path} (line {first_line[f.path]}): {f.error}" for f in unreadable]
    report.stats.update(missing=len(missing), unreadable=len(unreadable))
    # index: a DICOM frame, a NIfTI slice, a TIFF page or an npz row; it must exist
    if "index" in m.columns:
        for i, r in enumerate(m.rows):
            f = files[r["path"]]
            if not r["index"] or f.error:
                continue
            try:
                k = int(r["index"])
            except ValueError:
                report.errors.append(f"index '{r['index']}' of {r['path']} (line {i + 2}) is not an integer")
                continue
            n = f.n_index
            if f.shape is not None:
                axis = r.get("axis") or "2"
                n = f.shape[int(axis)] if axis.isdigit() and int(axis) < len(f.shape) else None
            if n is not None and not 0 <= k < n:
                report.errors.append(f"index {k} of {r['path']} (line {i + 2}) is out of range: it has {n}")
    modes: dict[str, Counter] = defaultdict(Counter)
    for i, r in enumerate(m.rows):
        f = files[r["path"]]
        if f.mode:
            modes[r.get("label", "")][f.mode] += 1
    all_modes = {mode for c in modes.values() for mode in c}
    report.stats["modes"] = {k: dict(c) for k, c in sorted(modes.items())}
    if len(all_modes) > 1:
        detail = "; ".join(f"{k or '(no label)'}: " + ", ".join(f"{mo} {n}" for mo, n in sorted(c.items()))
                           for k, c in sorted(modes.items()))
        report.warnings.append(f"images of mixed modes ({detail}): each is converted to the model's channels; "
                               f"a mode that goes with one label is a shortcut a model can learn")


def _check_exact_duplicates(m: Manifest, files: dict[str, _File], rows_of: dict, report: Report) -> None:
    groups: dict[str, list[str]] = defaultdict(list)
    for f in files.values():
        if f.sha256:
            groups[f.sha256].append(f.path)
    dups = [g for g in groups.values() if len(g) > 1]
    across_splits = across_labels = 0
    for paths in dups:
        rs = [m.rows[i] for p in paths for i in rows_of[p]]
        names = ", ".join(f"{p} [{_where(m.rows[rows_of[p][0]])}]" for p in paths)
        labels = sorted({r.get("label", "") for r in rs if r.get("label")})
        kind = _leak({r.get("split", "") for r in rs})
        if len(labels) > 1:
            across_labels += 1
            report.errors.append(f"byte-identical images under labels {' and '.join(labels)}: {names}")
        if kind:
            across_splits += 1
            splits = sorted({r["split"] for r in rs if r.get("split")})
            _add(report, kind, f"byte-identical images in {' and '.join(splits)}: {names}" + _leak_note(kind))
        per_split = Counter(s for p in paths for s in {m.rows[i].get("split", "") for i in rows_of[p]})
        if len(labels) <= 1 and not kind and max(per_split.values()) > 1:  # not just a train image in the pool
            report.warnings.append(f"byte-identical images ({len(paths)}): {names}")
    report.stats.update(exact_duplicate_groups=len(dups), exact_duplicate_files=sum(map(len, dups)),
                        exact_duplicate_groups_across_splits=across_splits,
                        exact_duplicate_groups_across_labels=across_labels)


def _check_near_duplicates(m: Manifest, files: dict[str, _File], rows_of: dict, threshold: int,
                           report: Report) -> None:
    """Pairs of files in different splits whose perceptual hashes are within `threshold` bits.

    Compared split against split only (never within a split): a few thousand images per split is a
    few million pairs, done as XOR + popcount on packed bits in chunks. Byte-identical pairs are
    left to the exact check.
    """
    buckets: dict[str, list[_File]] = defaultdict(list)
    for f in files.values():
        if f.phash is not None:
            for s in sorted({m.rows[i].get("split", "") for i in rows_of[f.path]}):
                if s:
                    buckets[s].append(f)
    names = sorted(buckets)
    pairs = []
    for a_i, sa in enumerate(names):
        for sb in names[a_i + 1:]:
            kind = _leak({sa, sb})
            if not kind:
                continue
            fa, fb = buckets[sa], buckets[sb]
            ha, hb = np.stack([f.phash for f in fa]), np.stack([f.phash for f in fb])
            step = max(1, (16 << 20) // (len(fb) * ha.shape[1]))  # ~16 MB of XOR per chunk
            for start in range(0, len(fa), step):
                d = hamming(ha[start:start + step], hb)
                for i, j in zip(*np.nonzero(d <= threshold)):
                    x, y = fa[start + i], fb[j]
                    if x.path != y.path and x.sha256 != y.sha256:
                        pairs.append((int(d[i, j]), x.path, sa, y.path, sb))
    for dist, x, sa, y, sb in sorted(pairs):
        wx, wy = (_where(next(m.rows[i] for i in rows_of[p] if m.rows[i].get("split") == s))
                  for p, s in ((x, sa), (y, sb)))
        report.warnings.append(f"near-duplicate images in {sa} and {sb} ({dist} of {HASH_BITS} bits apart): "
                               f"{x} [{wx}], {y} [{wy}]")
    report.stats.update(near_duplicate_pairs=len(pairs), near_threshold=threshold,
                        near_hashed=sum(f.phash is not None for f in files.values()))


# ---------------------------------------------------------------------------------------------
# helpers

def _leak(splits: set[str]) -> str | None:
    """'error' for two labeled (or unknown) splits, 'warning' for the pool with val/test, else None."""
    splits = {s for s in splits if s}
    if len(splits) < 2:
        return None
    rest = splits - {"unlabeled"}
    if len(rest) >= 2:
        return "error"
    return None if rest == {"train"} else "warning"


def _leak_note(kind: str) -> str:
    return "" if kind == "error" else " (pretraining sees evaluation images; no labels leak)"


def _add(report: Report, kind: str, message: str) -> None:
    (report.errors if kind == "error" else report.warnings).append(message)


def _where(row: dict) -> str:
    return "/".join(x for x in (row.get("split", ""), row.get("label", "")) if x) or "-"


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2: 8 bytes at a time
        return np.bitwise_count(np.ascontiguousarray(x).view(np.uint64)).sum(-1, dtype=np.int32)
    return _POPCOUNT8[x].sum(-1, dtype=np.int32)


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _ranges(lines: list[int], n: int = 10) -> str:
    return ", ".join(map(str, lines[:n])) + (f" and {len(lines) - n} more" if len(lines) > n else "")
