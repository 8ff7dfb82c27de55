"""The manifest: a CSV with one row per image, `path` relative to the manifest's folder.

Optional columns: `label`, `split`, `index` and `axis` (which frame or slice of `path`), `patient_id`,
`study_id`, `site`, `modality`, and any other metadata. See data_manifests/README.md for the
contract. No torch here: fingerprints are taken by `medalign status`, which must start fast.
"""
from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from medalign.errors import DataError


@dataclass(frozen=True)
class Manifest:
    path: Path
    columns: tuple[str, ...]
    rows: tuple[dict[str, str], ...]

    @property
    def root(self) -> Path:
        return self.path.parent

    def image_path(self, row: dict[str, str]) -> Path:
        return self.root / row["path"]

    def select(self, splits: list[str] | str | None) -> list[dict[str, str]]:
        """Rows of the given split(s), or every row for None; an empty selection is an error, not
        an empty epoch."""
        if splits is None:
            if not self.rows:
                raise DataError(f"manifest {self.path}: no rows")
            return list(self.rows)
        wanted = [splits] if isinstance(splits, str) else list(splits)
        if "split" not in self.columns:
            raise DataError(f"manifest {self.path}: has no 'split' column, needed to select {wanted}")
        rows = [r for r in self.rows if r["split"] in wanted]
        if not rows:
            found = sorted({r["split"] for r in self.rows})
            raise DataError(f"manifest {self.path}: no rows in split {'/'.join(wanted)} (splits present: {found})")
        return rows


def read_manifest(path: str | Path) -> Manifest:
    """Reads a UTF-8 CSV (a byte-order mark, as Excel writes, is allowed); anything else, a binary
    file given by mistake included, is a one-line DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"manifest {path}: not a UTF-8 text CSV (byte {e.start} is 0x{raw[e.start]:02x}); "
                        "is it an image or a spreadsheet?") from None
    if "\0" in text:
        raise DataError(f"manifest {path}: holds NUL bytes, so it is not a text CSV")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        columns = tuple(reader.fieldnames or ())
        if "path" not in columns:
            raise DataError(f"manifest {path}: no 'path' column (columns: {list(columns) or 'none'})")
        rows = tuple({k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader)
    except csv.Error as e:
        raise DataError(f"manifest {path}: line {reader.line_num}: {e}") from None
    if not rows:
        raise DataError(f"manifest {path}: has no rows")
    blank = [i + 2 for i, r in enumerate(rows) if not r["path"]]
    if blank:
        raise DataError(f"manifest {path}: empty 'path' on line(s) {_ranges(blank)}")
    return Manifest(path, columns, rows)


def frame_index(manifest: Manifest, row: dict[str, str]) -> int | None:
    """The optional `index` column: a DICOM frame, a NIfTI slice or an npz row."""
    value = row.get("index", "")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise DataError(f"manifest {manifest.path}: index '{value}' of {row['path']} is not an integer") from None


def slice_axis(manifest: Manifest, row: dict[str, str]) -> int | None:
    """The optional `axis` column: the voxel axis a NIfTI row's `index` slices (empty: axis 2)."""
    value = row.get("axis", "")
    if not value:
        return None
    if value not in ("0", "1", "2"):
        raise DataError(f"manifest {manifest.path}: axis '{value}' of {row['path']} is not 0, 1 or 2")
    return int(value)


def patient_splits(manifest: Manifest) -> dict[str, Counter]:
    """Rows per split of every patient (empty when there is no patient_id or split column)."""
    splits_of: dict[str, Counter] = defaultdict(Counter)
    if "patient_id" in manifest.columns and "split" in manifest.columns:
        for r in manifest.rows:
            if r["patient_id"] and r["split"]:
                splits_of[r["patient_id"]][r["split"]] += 1
    return splits_of


def check_no_leak(manifest: Manifest) -> None:
    """Refuses a patient in two labeled splits: its test score would measure memory, not skill."""
    leaks = {p: sorted(s) for p, s in patient_splits(manifest).items() if len(set(s) - {"unlabeled"}) > 1}
    if leaks:
        shown = ", ".join(f"{p} ({'/'.join(s)})" for p, s in list(leaks.items())[:10])
        raise DataError(f"manifest {manifest.path}: {len(leaks)} patient(s) in two labeled splits, e.g. {shown}; "
                        "re-split with `medalign manifest split`")


def check_files(manifest: Manifest, rows: list[dict[str, str]]) -> None:
    """Every missing image at once: a user fixes a broken export in one go, not one run per file."""
    index = {id(r): i for i, r in enumerate(manifest.rows)}
    missing = [f"{r['path']} (line {index[id(r)] + 2})" for r in rows if not manifest.image_path(r).is_file()]
    if missing:
        raise DataError(f"manifest {manifest.path}: {len(missing)} of {len(rows)} images missing: "
                        + ", ".join(missing))


def fingerprint(path: str | Path, content: bool = False, signatures: dict[str, str] | None = None) -> str:
    """sha256 of the manifest's bytes and each image's path and signature (see `inventory`; pass the
    one already taken, so that no image is looked at twice)."""
    manifest = read_manifest(path)
    h = hashlib.sha256(manifest.path.read_bytes())
    signatures = signatures if signatures is not None else inventory(manifest, content)
    for row in manifest.rows:
        h.update(f"{row['path']}\0{signatures[row['path']]}\n".encode())
    return h.hexdigest()


def inventory(manifest: Manifest | str | Path, content: bool = False) -> dict[str, str]:
    """Each image file of the manifest -> its signature: `size\0mtime_ns`, or with `content` its sha256.

    Sizes and mtimes by default: a nightly job over a large archive must not re-read every pixel to
    learn that nothing changed; a copy that resets mtimes reruns stages, which errs on the safe side.
    Content hashes survive such a copy and catch an edit that keeps size and mtime; they are cached
    by size, mtime and ctime (medalign.data.hashes), so a second pass reads no image either.
    """
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest)
    files = {row["path"]: manifest.image_path(row) for row in manifest.rows}
    stats = {}
    for rel, p in files.items():
        try:
            st = p.stat()
            stats[rel] = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            stats[rel] = None
    if content:
        from medalign.data.hashes import content_hashes  # sqlite: only for those who ask

        hashes = content_hashes([files[rel] for rel, st in stats.items() if st is not None])
        return {rel: hashes[files[rel]] if st else "missing" for rel, st in stats.items()}
    return {rel: f"{st[0]}\0{st[1]}" if st else "missing" for rel, st in stats.items()}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (images and weight files may be large)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """'1 group', '2 groups': counts in messages read as English, not as '1 groups' or 'group(s)'."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


def _ranges(lines: list[int]) -> str:
    return ", ".join(map(str, lines[:20])) + (f" and {len(lines) - 20} more" if len(lines) > 20 else "")
