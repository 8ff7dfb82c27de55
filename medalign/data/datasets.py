"""torch Datasets over manifest rows."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from medalign.data.manifest import Manifest, check_files, read_manifest
from medalign.data.readers import read_image, verify_images
from medalign.errors import DataError


def load_rows(manifest_path: str | Path, splits: list[str] | str) -> tuple[Manifest, list[dict]]:
    """The rows of the given splits, after checking that every image exists and opens."""
    manifest = read_manifest(manifest_path)
    rows = manifest.select(splits)
    check_files(manifest, rows)
    verify_images([manifest.image_path(r) for r in rows], [frame_index(manifest, r) for r in rows])
    return manifest, rows


def frame_index(manifest: Manifest, row: dict) -> int | None:
    """The optional `index` column: a DICOM frame, a NIfTI slice or an npz row."""
    value = row.get("index", "")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise DataError(f"manifest {manifest.path}: index '{value}' of {row['path']} is not an integer") from None


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
    """Returns (transform(image), class index), index -1 where no classes are given."""

    def __init__(self, manifest: Manifest, rows: list[dict], transform: Callable, channels: int,
                 classes: list[str] | None = None):
        self.manifest, self.rows, self.transform, self.channels = manifest, rows, transform, channels
        self.targets = [-1] * len(rows)
        if classes is not None:
            unknown = sorted({r["label"] for r in rows} - set(classes))
            if unknown:
                raise DataError(f"manifest {manifest.path}: labels {unknown} are not among the model's "
                                f"classes {classes}")
            self.targets = [classes.index(r["label"]) for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = self.rows[i]
        image = read_image(self.manifest.image_path(row), self.channels, frame_index(self.manifest, row))
        return self.transform(image.transpose(1, 2, 0)), torch.tensor(self.targets[i])
