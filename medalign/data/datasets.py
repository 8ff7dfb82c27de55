"""torch Datasets over manifest rows."""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from medalign.data.manifest import Manifest, check_files, frame_index, read_manifest, slice_axis
from medalign.data.preprocess_cache import PreprocessCache, default_root
from medalign.data.readers import read_image, unreadable
from medalign.errors import DataError

log = logging.getLogger(__name__)


def load_rows(manifest_path: str | Path, splits: list[str] | str,
              on_error: str = "fail") -> tuple[Manifest, list[dict], list[dict]]:
    """The rows of the given splits whose images exist and open, and the rows skipped (with why).

    on_error="fail" raises on the first bad file found, naming every bad one; "skip" drops them,
    and the stage lists them in its output rather than losing them silently. The check is
    `readers.unreadable`, the one `medalign manifest validate` runs too: a manifest that validates
    loses no row here.
    """
    manifest = read_manifest(manifest_path)
    rows = manifest.select(splits)
    if on_error == "fail":
        check_files(manifest, rows)
    bad = unreadable([manifest.image_path(r) for r in rows], [frame_index(manifest, r) for r in rows],
                     [slice_axis(manifest, r) for r in rows])
    if bad and on_error == "fail":
        raise DataError(f"{len(bad)} unreadable image(s): "
                        + "; ".join(f"{manifest.image_path(rows[i])} ({why})" for i, why in bad))
    skipped = [{"path": rows[i]["path"], "index": rows[i].get("index", ""), "reason": why} for i, why in bad]
    drop = {i for i, _ in bad}
    kept = [r for i, r in enumerate(rows) if i not in drop]
    if not kept:
        raise DataError(f"manifest {manifest.path}: every row of split {splits} was skipped "
                        f"({skipped[0]['path']}: {skipped[0]['reason']}, ...)")
    return manifest, kept, skipped


def write_skipped(out_dir: Path, skipped: list[dict], name: str = "skipped.csv") -> int:
    """skipped.csv in the stage output; returns the count for metrics.json."""
    if skipped:
        with (out_dir / name).open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["path", "index", "reason"])
            if f.tell() == 0:
                w.writeheader()
            w.writerows(skipped)
        log.warning("skipped %d unreadable or missing row(s); listed in %s", len(skipped), out_dir / name)
    return len(skipped)


def class_names(manifest: Manifest, rows: list[dict]) -> list[str]:
    if "label" not in manifest.columns:
        raise DataError(f"manifest {manifest.path}: no 'label' column")
    unlabeled = [r["path"] for r in rows if not r["label"]]
    if unlabeled:
        raise DataError(f"manifest {manifest.path}: {len(unlabeled)} labeled-split rows without a label, "
                        f"e.g. {', '.join(unlabeled[:5])}")
    names = sorted({r["label"] for r in rows})
    if len(names) < 2:
        raise DataError(f"manifest {manifest.path}: need at least 2 classes to train, found {names}")
    return names


class ImageDataset(Dataset):
    """Returns (transform(image), target): the class index, -1 where no classes are given, or the
    `targets` given (a task's multi-hot vectors or grades).

    `reader`: what read_image takes besides the path (window, percentiles). `cache_size`: decode
    and resize every image once into the preprocessing cache ($MEDALIGN_CACHE, default
    ~/.cache/medalign) and read from it, instead of decoding each file every epoch.
    """

    def __init__(self, manifest: Manifest, rows: list[dict], transform: Callable, channels: int,
                 classes: list[str] | None = None, reader: dict | None = None, cache_size: int | None = None,
                 targets: list | None = None):
        self.manifest, self.rows, self.transform, self.channels = manifest, rows, transform, channels
        self.reader = reader or {}
        self.cache = None
        if cache_size:
            self.cache = PreprocessCache(default_root(), manifest, rows, channels, cache_size, **self.reader)
            self.cache.fill(progress=True)
        self.targets = targets if targets is not None else [-1] * len(rows)
        if classes is not None and targets is None:
            unknown = sorted({r["label"] for r in rows} - set(classes))
            if unknown:
                raise DataError(f"manifest {manifest.path}: labels {unknown} are not among the model's "
                                f"classes {classes}")
            self.targets = [classes.index(r["label"]) for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        if self.cache is not None:
            image = self.cache[i]
        else:
            row = self.rows[i]
            image = read_image(self.manifest.image_path(row), self.channels, frame_index(self.manifest, row),
                               axis=slice_axis(self.manifest, row), **self.reader).transpose(1, 2, 0)
        return self.transform(image), torch.tensor(self.targets[i])
