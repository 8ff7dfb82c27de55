"""Every problem of a manifest at once, before hours of training.

`validate(manifest)` returns a Report: problems, each an error (training on this would be wrong or
would fail) or a warning (worth a look) of one kind, naming the manifest rows it concerns; and
stats (rows, per-split class counts, duplicate counts, val/test images with a copy in train,
timings). `Report.format` prints it with `limit` lines per kind; `to_json` and `write_csv` hand it
to programs (the CSV: one row per manifest row concerned, so offending rows can be dropped by a
join on path and index instead of parsing text).

Readability is the readers' own check, `medalign.data.readers.unreadable`, run row by row with the
row's `index` and `axis`: the check the stages run before training (`datasets.load_rows`), so a
manifest that validates loses no row there. Checks: missing and unreadable files, `index`/`axis`
values; labeled splits (train/val/test) with empty labels; labels in val/test that train lacks;
unknown split names; one patient in two splits; byte-identical images within a split, across
splits or under two labels; near-duplicates across splits or under two labels (with or without a
split column).

Each file's bytes are read once for the sha256 (exact duplicates) and, for 2D images, a small
grayscale thumbnail (the perceptual hash); a thumbnail that will not decode is reported unreadable
too, since training decodes the same pixels. DICOM, NIfTI and npz files take part in the exact
check only. A re-encoded copy (a JPEG re-saved, a PNG of a JPEG) differs in its bytes, so the exact
check cannot see it: the near-duplicate check is there for those.

Splits: `train`, `val`, `test` are labeled, `unlabeled` is the pretraining pool. An image or
patient in two labeled splits is a leak (error). The pool overlapping train is normal (no
message); the pool holding val/test images is a warning: no labels leak, but pretraining has seen
the images the evaluation is about. No DICOM header value is read here beyond what the readers'
check needs, and none reaches the report.
"""
from __future__ import annotations

import hashlib
import io
import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from medalign.data.build import write_csv
from medalign.data.manifest import (Manifest, file_sha256, frame_index, patient_splits, plural, read_manifest,
                                    slice_axis)
from medalign.data.readers import image_format, unreadable
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
# The problems CSV (`Report.write_csv`): one row per manifest row a problem concerns.
CSV_COLUMNS = ("path", "index", "line", "split", "label", "kind", "severity", "detail", "related")


@dataclass
class Problem:
    severity: str  # "error" or "warning"
    kind: str  # e.g. "unreadable", "byte-identical across splits", "near-duplicates under different labels"
    message: str  # one line for people
    rows: list[dict] = field(default_factory=list)  # the manifest rows concerned (see `_row`)


@dataclass
class Report:
    manifest: str
    problems: list[Problem] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    @property
    def errors(self) -> list[str]:
        return [p.message for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[str]:
        return [p.message for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, severity: str, kind: str, message: str, rows: list[dict] = ()) -> None:
        self.problems.append(Problem(severity, kind, message, list(rows)))

    def format(self, limit: int | None = None) -> str:
        """A printable report: summary, then each problem on one line, at most `limit` per kind."""
        s = self.stats
        lines = [f"{self.manifest}: {plural(s.get('rows', 0), 'row')}, {plural(s.get('files', 0), 'file')}"]
        for split, labels in s.get("class_counts", {}).items():
            counts = ", ".join(f"{k or '(no label)'} {v}" for k, v in labels.items())
            lines.append(f"  {split or '(no split)'}: {plural(sum(labels.values()), 'row')} ({counts})")
        if "exact_duplicate_groups" in s:
            lines.append(f"  exact duplicates: {plural(s['exact_duplicate_groups'], 'group')} of byte-identical files")
        if "near_duplicate_pairs" in s:
            lines.append(f"  near-duplicates: {plural(s['near_duplicate_pairs'], 'pair')} across splits, "
                         f"{plural(s['near_duplicate_pairs_across_labels'], 'pair')} under different labels "
                         f"(within {s['near_threshold']} of {HASH_BITS} bits)")
        for split, c in s.get("copies_in_train", {}).items():
            near = (plural(c["near_duplicate"], "near-duplicate") if "near_duplicate_pairs" in s
                    else "near-duplicates not checked")
            line = (f"  {split}: {c['images']} of {plural(c['of'], 'image')} {'has' if c['images'] == 1 else 'have'} "
                    f"a copy in train ({c['byte_identical']} byte-identical, {near})")
            lines.append(line + (f"; drop {'it' if c['images'] == 1 else 'them'} for a {split} score on unseen images"
                                 if c["images"] else ""))
        for severity in ("error", "warning"):
            by_kind: dict[str, list[Problem]] = defaultdict(list)
            for p in self.problems:
                if p.severity == severity:
                    by_kind[p.kind].append(p)
            for kind, items in by_kind.items():
                shown = items if limit is None else items[:limit]
                lines += [f"{severity}: {p.message}" for p in shown]
                if len(items) > len(shown):
                    n = len(items) - len(shown)
                    lines.append(f"... and {n} more {kind} {severity if n == 1 else severity + 's'}")
        lines.append(f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)"
                     + (f" in {s['seconds']['total']:.1f} s" if "seconds" in s else ""))
        return "\n".join(lines)

    def problem_rows(self) -> list[dict]:
        """The problems CSV's rows (`CSV_COLUMNS`), one per manifest row a problem concerns."""
        return [{"path": r["path"], "index": r["index"], "line": r["line"], "split": r["split"], "label": r["label"],
                 "kind": p.kind, "severity": p.severity, "detail": r["detail"], "related": r["related"]}
                for p in self.problems for r in p.rows]

    def to_json(self) -> dict:
        return {"manifest": self.manifest, "ok": self.ok, "errors": len(self.errors),
                "warnings": len(self.warnings), "stats": self.stats,
                "problems": [asdict(p) for p in self.problems]}

    def write_csv(self, path: str | Path) -> None:
        """The problems as CSV, written atomically (temp file + rename)."""
        write_csv(path, list(CSV_COLUMNS), self.problem_rows())


@dataclass
class _File:
    path: str
    sha256: str | None = None
    phash: np.ndarray | None = None
    mode: str | None = None
    missing: bool = False
    unreadable: dict[int, str] = field(default_factory=dict)  # manifest row -> why it will not read


def validate(manifest_path: str | Path, near_duplicates: bool = True, near_threshold: int = NEAR_THRESHOLD,
             workers: int | None = None) -> Report:
    """Checks a manifest and every file it names; never raises for bad data, reports it.

    near_duplicates=False skips thumbnails and the perceptual comparison (files then get the
    readers' check and the sha256 only). `workers` threads read files (Pillow, hashlib and the
    readers' checks mostly release the GIL); default: one per core, at most 8.
    """
    t0 = time.perf_counter()
    report = Report(str(manifest_path))
    try:
        m = read_manifest(manifest_path)
    except DataError as e:
        report.add("error", "manifest", str(e))
        return report
    rows = m.rows
    report.stats.update(rows=len(rows), columns=list(m.columns))
    _check_splits_and_labels(m, report)
    _check_patients(m, report)
    _check_repeated_rows(m, report)
    args = _reader_args(m, report)

    rows_of: dict[str, list[int]] = defaultdict(list)  # unique paths, in manifest order
    for i, r in enumerate(rows):
        rows_of[r["path"]].append(i)
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        scans = pool.map(lambda p: _scan(m, p, [(i, args[i]) for i in rows_of[p]], near_duplicates), rows_of)
        files = dict(zip(rows_of, scans))
    t_read = time.perf_counter()
    report.stats["files"] = len(files)
    _check_files(m, files, rows_of, report)
    groups = _check_exact_duplicates(m, files, rows_of, report)
    pairs = _check_near_duplicates(m, files, rows_of, near_threshold, report) if near_duplicates else []
    _count_copies_in_train(m, rows_of, groups, pairs, report)
    t_end = time.perf_counter()
    report.stats["seconds"] = {"read": round(t_read - t0, 3), "compare": round(t_end - t_read, 3),
                               "total": round(t_end - t0, 3)}
    return report


def _row(m: Manifest, i: int, detail: str = "", related: str = "") -> dict:
    r = m.rows[i]
    return {"path": r["path"], "index": r.get("index", ""), "line": i + 2, "split": r.get("split", ""),
            "label": r.get("label", ""), "detail": detail, "related": related}


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
        report.add("warning", "no split column",
                   "no 'split' column: stages cannot select rows (add train/val/test/unlabeled)")
        return
    for split in sorted(s for s in counts if s not in KNOWN_SPLITS):
        idx = [i for i, r in enumerate(rows) if r["split"] == split]
        if split:
            report.add("warning", "unknown split", f"unknown split '{split}' ({plural(len(idx), 'row')}): stages "
                       f"select {', '.join(KNOWN_SPLITS)} by name", [_row(m, i, f"split '{split}'") for i in idx])
        else:
            report.add("warning", "no split", f"{plural(len(idx), 'row')} {_have(idx)} no split, so no stage uses "
                       f"{'it' if len(idx) == 1 else 'them'} ({_lines(idx)})", [_row(m, i, "empty split") for i in idx])
    labeled = [s for s in LABELED if s in counts]
    if "label" not in cols:
        if labeled:
            report.add("warning", "no label column",
                       f"no 'label' column: {'/'.join(labeled)} rows can only be used for pretraining")
        return
    for split in labeled:
        idx = [i for i, r in enumerate(rows) if r["split"] == split and not r["label"]]
        if idx:
            report.add("error", "no label", f"{plural(len(idx), f'{split} row')} {_have(idx)} no label ({_lines(idx)})",
                       [_row(m, i, f"{split} row without a label") for i in idx])
    train = {k for k in counts.get("train", {}) if k}
    if "train" in counts:
        if len(train) < 2:
            report.add("error", "too few classes", f"train has {plural(len(train), 'class', 'classes')} "
                       f"{sorted(train)}: training needs at least 2")
        for split in ("val", "test"):
            for label, n in sorted(counts.get(split, {}).items()):
                if label and label not in train:
                    idx = [i for i, r in enumerate(rows) if r["split"] == split and r["label"] == label]
                    report.add("error", "label not in train", f"label '{label}' is in {split} ({plural(n, 'row')}) "
                               f"but not in train: the model cannot predict it",
                               [_row(m, i, f"label '{label}' is not in train") for i in idx])
    for split in ("val", "test"):
        present = [k for k in counts.get(split, {}) if k]
        if len(present) == 1:
            report.add("warning", "single class", f"{split} has a single class '{present[0]}': AUC is undefined on it")


def _check_patients(m: Manifest, report: Report) -> None:
    if "patient_id" not in m.columns or "split" not in m.columns:
        return
    splits_of = patient_splits(m)
    report.stats["patients"] = len(splits_of)
    rows_of: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(m.rows):
        rows_of[r["patient_id"]].append(i)
    for pid, splits in splits_of.items():
        kind = _leak(set(splits))
        if kind:
            where = " and ".join(f"{s} ({plural(n, 'row')})" for s, n in sorted(splits.items()))
            report.add(kind, "patient in two splits", f"patient {pid} is in {where}" + _leak_note(kind),
                       [_row(m, i, f"patient {pid} is in {'/'.join(sorted(splits))}") for i in rows_of[pid]])


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
            splits = sorted({m.rows[i]["split"] for i in idx if m.rows[i]["split"]})
            report.add(kind, "row in two splits", f"{path} has rows in {', '.join(splits)} ({_lines(idx)})"
                       + _leak_note(kind), [_row(m, i, f"listed in {'/'.join(splits)}") for i in idx])
        same: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i in idx:
            same[(m.rows[i].get("index", ""), m.rows[i].get("axis", ""))].append(i)
        for (index, axis), rep in same.items():
            if len(rep) < 2:
                continue
            what = path + (f" index {index}" if index else "") + (f" axis {axis}" if axis else "")
            labels = sorted({m.rows[i].get("label", "") for i in rep})
            if len(labels) > 1:
                report.add("error", "repeated row with different labels", f"{what} is listed {len(rep)} times "
                           f"with labels {', '.join(labels)} ({_lines(rep)})",
                           [_row(m, i, f"listed {len(rep)} times, labels {', '.join(labels)}") for i in rep])
            elif not kind:
                report.add("warning", "repeated row", f"{what} is listed {len(rep)} times ({_lines(rep)})",
                           [_row(m, i, f"listed {len(rep)} times") for i in rep])


def _reader_args(m: Manifest, report: Report) -> list[tuple[int | None, int | None] | None]:
    """Each row's (index, axis) as the stages parse them; None (and a problem) where they cannot."""
    out = []
    for i, r in enumerate(m.rows):
        details = []
        for parse, column, want in ((frame_index, "index", "an integer"), (slice_axis, "axis", "0, 1 or 2")):
            try:
                parse(m, r)
            except DataError:
                details.append(f"{column} '{r[column]}' is not {want}")
        if details:
            report.add("error", "bad index", f"bad index: {r['path']} (line {i + 2}): {'; '.join(details)}",
                       [_row(m, i, "; ".join(details))])
        out.append(None if details else (frame_index(m, r), slice_axis(m, r)))
    return out


# ---------------------------------------------------------------------------------------------
# files

def _scan(m: Manifest, path: str, checks: list[tuple[int, tuple | None]], thumbnail: bool) -> _File:
    """Reads one file: sha256, the readers' check of each of its rows, the perceptual hash of a 2D image."""
    f = _File(path)
    full = m.root / path
    if not full.is_file():
        f.missing = True
        return f
    kind = image_format(full)
    try:
        data = None if kind == "nifti" or full.stat().st_size > _STREAM_ABOVE else full.read_bytes()
        f.sha256 = hashlib.sha256(data).hexdigest() if data is not None else file_sha256(full)
    except OSError as e:
        f.unreadable = {i: one_line(e) for i, _ in checks}
        return f
    ok = [(i, a) for i, a in checks if a is not None]
    for pos, why in unreadable([full] * len(ok), [a[0] for _, a in ok], [a[1] for _, a in ok]):
        f.unreadable[ok[pos][0]] = why
    if kind == "pillow" and ok and not f.unreadable:
        try:
            with Image.open(io.BytesIO(data) if data is not None else full) as im:
                f.mode = im.mode
                if thumbnail:
                    f.phash = perceptual_hash(im)
        except Exception as e:  # noqa: BLE001 - pixels that will not decode fail training too
            f.unreadable = {i: one_line(e) for i, _ in ok}
    return f


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


def _check_files(m: Manifest, files: dict[str, _File], rows_of: dict[str, list[int]], report: Report) -> None:
    for path, f in files.items():
        if f.missing:  # "not found": the reason the stages give for such a row
            report.add("error", "missing", f"missing: {path} ({_lines(rows_of[path])})",
                       [_row(m, i, "not found") for i in rows_of[path]])
            continue
        by_reason: dict[str, list[int]] = defaultdict(list)
        for i, why in sorted(f.unreadable.items()):
            by_reason[why].append(i)
        for why, idx in by_reason.items():
            report.add("error", "unreadable", f"unreadable: {path} ({_lines(idx)}): {why}",
                       [_row(m, i, why) for i in idx])
    report.stats.update(missing=sum(f.missing for f in files.values()),
                        unreadable=sum(bool(f.unreadable) for f in files.values()),
                        unreadable_rows=sum(len(f.unreadable) for f in files.values()))
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
        report.add("warning", "mixed modes", f"images of mixed modes ({detail}): each is converted to the model's "
                   f"channels; a mode that goes with one label is a shortcut a model can learn")


def _check_exact_duplicates(m: Manifest, files: dict[str, _File], rows_of: dict, report: Report) -> list[list[str]]:
    """Groups of byte-identical files (different paths), each reported by what it puts at risk."""
    groups: dict[str, list[str]] = defaultdict(list)
    for f in files.values():
        if f.sha256:
            groups[f.sha256].append(f.path)
    dups = [g for g in groups.values() if len(g) > 1]
    across_splits = across_labels = 0
    for paths in dups:
        idx = [i for p in paths for i in rows_of[p]]
        names = ", ".join(f"{p} [{_where(m.rows[rows_of[p][0]])}]" for p in paths)
        labels = sorted({m.rows[i].get("label", "") for i in idx} - {""})
        kind = _leak({m.rows[i].get("split", "") for i in idx})

        def rows(detail: str) -> list[dict]:
            return [_row(m, i, detail, " | ".join(p for p in paths if p != m.rows[i]["path"])) for i in idx]

        if len(labels) > 1:
            across_labels += 1
            report.add("error", "byte-identical under different labels",
                       f"byte-identical images under labels {' and '.join(labels)}: {names}",
                       rows(f"byte-identical copies under labels {', '.join(labels)}"))
        if kind:
            across_splits += 1
            splits = sorted({m.rows[i]["split"] for i in idx if m.rows[i].get("split")})
            report.add(kind, "byte-identical across splits",
                       f"byte-identical images in {' and '.join(splits)}: {names}" + _leak_note(kind),
                       rows(f"byte-identical copies in {'/'.join(splits)}"))
        per_split = Counter(s for p in paths for s in {m.rows[i].get("split", "") for i in rows_of[p]})
        if len(labels) <= 1 and not kind and max(per_split.values()) > 1:  # not just a train image in the pool
            report.add("warning", "byte-identical", f"byte-identical images ({len(paths)}): {names}",
                       rows(f"{len(paths)} byte-identical copies"))
    report.stats.update(exact_duplicate_groups=len(dups), exact_duplicate_files=sum(map(len, dups)),
                        exact_duplicate_groups_across_splits=across_splits,
                        exact_duplicate_groups_across_labels=across_labels)
    return dups


def _check_near_duplicates(m: Manifest, files: dict[str, _File], rows_of: dict, threshold: int,
                           report: Report) -> list[tuple[str, str]]:
    """Pairs of files whose perceptual hashes are within `threshold` bits, in two splits that must
    not share images or under two different labels (with or without a split column).

    Files are bucketed by (split, label) and only buckets that can make such a pair are compared,
    never a bucket with itself: a few thousand images per bucket is a few million pairs, done as
    XOR + popcount on packed bits in chunks. Byte-identical pairs are left to the exact check.
    """
    buckets: dict[tuple[str, str], list[_File]] = defaultdict(list)
    for f in files.values():
        if f.phash is not None:
            for key in sorted({(m.rows[i].get("split", ""), m.rows[i].get("label", "")) for i in rows_of[f.path]}):
                buckets[key].append(f)
    keys = sorted(buckets)
    # (kind, path, path) -> (distance, note, x, kx, y, ky); all warnings: a perceptual hash can
    # match two different images, a byte-identical copy cannot
    found: dict[tuple[str, str, str], tuple] = {}
    for a_i, ka in enumerate(keys):
        for kb in keys[a_i + 1:]:
            leak = _leak({ka[0], kb[0]})
            relabel = bool(ka[1] and kb[1] and ka[1] != kb[1])
            if not (leak or relabel):
                continue
            for x, y, dist in _close_pairs(buckets[ka], buckets[kb], threshold):
                if leak:
                    found.setdefault(("near-duplicates across splits", *sorted((x.path, y.path))),
                                     (dist, _leak_note(leak), x.path, ka, y.path, kb))
                if relabel:  # the pair in label order, whatever the splits
                    pair = (x.path, ka, y.path, kb) if ka[1] < kb[1] else (y.path, kb, x.path, ka)
                    found.setdefault(("near-duplicates under different labels", *sorted((x.path, y.path))),
                                     (dist, "", *pair))
    counts = Counter()
    for (kind, _, _), (dist, note, x, kx, y, ky) in sorted(found.items(), key=lambda kv: (kv[1][0], kv[0])):
        counts[kind] += 1
        what = f"in {kx[0]} and {ky[0]}" if kind.endswith("splits") else f"under labels {kx[1]} and {ky[1]}"
        detail = f"near-duplicate ({dist} of {HASH_BITS} bits apart)"
        rows = [_row(m, i, detail, other) for p, k, other in ((x, kx, y), (y, ky, x))
                for i in rows_of[p] if (m.rows[i].get("split", ""), m.rows[i].get("label", "")) == k]
        report.add("warning", kind, f"near-duplicate images {what} ({dist} of {HASH_BITS} bits apart): "
                   f"{x} [{_where_key(kx)}], {y} [{_where_key(ky)}]{note}", rows)
    report.stats.update(near_duplicate_pairs=counts["near-duplicates across splits"],
                        near_duplicate_pairs_across_labels=counts["near-duplicates under different labels"],
                        near_threshold=threshold, near_hashed=sum(f.phash is not None for f in files.values()))
    return sorted({(x, y) for _, _, x, _, y, _ in found.values()})


def _close_pairs(fa: list[_File], fb: list[_File], threshold: int):
    ha, hb = np.stack([f.phash for f in fa]), np.stack([f.phash for f in fb])
    step = max(1, (16 << 20) // (len(fb) * ha.shape[1]))  # ~16 MB of XOR per chunk
    for start in range(0, len(fa), step):
        d = hamming(ha[start:start + step], hb)
        for i, j in zip(*np.nonzero(d <= threshold)):
            x, y = fa[start + i], fb[j]
            if x.path != y.path and x.sha256 != y.sha256:
                yield x, y, int(d[i, j])


def _count_copies_in_train(m: Manifest, rows_of: dict, groups: list[list[str]], pairs: list[tuple[str, str]],
                           report: Report) -> None:
    """How many val/test images have a copy in train: the rows to drop for a score on unseen images.

    A copy is the same file listed in train too, a byte-identical file, or (when checked) a
    near-duplicate; an image with both kinds counts as byte-identical.
    """
    if "split" not in m.columns:
        return
    splits_of = {p: {m.rows[i]["split"] for i in idx} for p, idx in rows_of.items()}
    if not any("train" in s for s in splits_of.values()):
        return
    exact: dict[str, set] = defaultdict(set)
    near: dict[str, set] = defaultdict(set)

    def mark(into: dict, path: str) -> None:
        for s in splits_of[path] & {"val", "test"}:
            into[s].add(path)

    for p, splits in splits_of.items():
        if "train" in splits:
            mark(exact, p)
    for g in groups:
        if any("train" in splits_of[p] for p in g):
            for p in g:
                mark(exact, p)
    for x, y in pairs:
        if "train" in splits_of[y]:
            mark(near, x)
        if "train" in splits_of[x]:
            mark(near, y)
    out = {}
    for s in ("val", "test"):
        n = sum(s in splits for splits in splits_of.values())
        if n:
            out[s] = {"images": len(exact[s] | near[s]), "of": n, "byte_identical": len(exact[s]),
                      "near_duplicate": len(near[s] - exact[s])}
    report.stats["copies_in_train"] = out


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


def _where(row: dict) -> str:
    return _where_key((row.get("split", ""), row.get("label", "")))


def _where_key(key: tuple[str, str]) -> str:
    return "/".join(x for x in key if x) or "-"


def _have(idx: list) -> str:
    return "has" if len(idx) == 1 else "have"


def _lines(idx: list[int]) -> str:
    """Manifest rows as the line numbers an editor shows (the header is line 1)."""
    return f"line{'' if len(idx) == 1 else 's'} {_ranges([i + 2 for i in idx])}"


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2: 8 bytes at a time
        return np.bitwise_count(np.ascontiguousarray(x).view(np.uint64)).sum(-1, dtype=np.int32)
    return _POPCOUNT8[x].sum(-1, dtype=np.int32)


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)



def _ranges(lines: list[int], n: int = 10) -> str:
    return ", ".join(map(str, lines[:n])) + (f" and {len(lines) - n} more" if len(lines) > n else "")
