"""Data loading: DICOM decode + augmentation vs the preprocessing cache + augmentation.

    python benchmarks/data_loading.py [--n 256] [--size 224] [--source-size 1024]

Makes N 16-bit DICOM files (MONOCHROME2, BitsStored 16, Rescale Slope/Intercept, explicit VR little
endian) from the chest X-ray JPEGs in ../shared/data/chest_xray (random images where absent), plus a
manifest, in a temp folder. Measures, single process, time.perf_counter:

  (a) first pass: read_image + resize + train augmentation, over all rows
  (b) cache fill (PreprocessCache.fill)
  (c) cached pass: cache[i] + the same augmentation
  and the split of (a) into decode+resize only and augmentation only.

Prints the results section and replaces (or appends) the section "## Data loading
(benchmarks/data_loading.py)" in benchmarks/RESULTS.md, leaving the other sections as they are.
"""
from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
from results import machine, update_section  # noqa: E402

HEADING = "## Data loading (benchmarks/data_loading.py)"
HERE = Path(__file__).resolve().parent
SOURCE = Path(__file__).resolve().parents[2] / "shared/data/chest_xray"


def write_dicom(path: Path, pixels: np.ndarray, slope: float, intercept: float) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "BENCH", "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def make_data(folder: Path, n: int, size: int) -> tuple[Path, str]:
    from PIL import Image

    jpegs = sorted(SOURCE.rglob("*.jpeg"))[:n] if SOURCE.is_dir() else []
    rng = np.random.default_rng(0)
    lines = ["path,label"]
    for i in range(n):
        if jpegs:
            with Image.open(jpegs[i % len(jpegs)]) as im:
                g = np.asarray(im.convert("L").resize((size, size), Image.BILINEAR), dtype=np.float64)
            pixels = np.rint(g / 255.0 * 65535.0)
        else:
            pixels = rng.integers(0, 65536, (size, size))
        write_dicom(folder / f"img{i:05d}.dcm", pixels.astype(np.uint16), 1.0, -1024.0)
        lines.append(f"img{i:05d}.dcm,{'ab'[i % 2]}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    source = f"{min(n, len(jpegs))} distinct chest X-ray JPEGs from ../shared/data/chest_xray" if jpegs \
        else "random images (../shared/data/chest_xray absent)"
    return folder / "manifest.csv", source


def run(n: int, size: int, source_size: int) -> str:
    from medalign.config import AugmentConfig
    from medalign.data import readers
    from medalign.data.manifest import read_manifest
    from medalign.data.preprocess_cache import PreprocessCache, resize_hwc
    from medalign.data.transforms import train_view

    with tempfile.TemporaryDirectory(prefix="medalign-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "data").mkdir()
        manifest_path, source = make_data(tmp / "data", n, source_size)
        manifest = read_manifest(manifest_path)
        rows = list(manifest.rows)
        paths = [manifest.image_path(r) for r in rows]
        aug = train_view(size, AugmentConfig(), mean=(0.5,), std=(0.25,))
        aug.set_random_seed(0)

        def decode(p):
            return resize_hwc(readers.read_image(p, 1).transpose(1, 2, 0), size)

        warm = decode(paths[0])  # warm-up: imports, cv2 and pydicom init, albumentations' first calls
        for _ in range(20):
            aug(image=warm)

        t = time.perf_counter()
        for p in paths:
            aug(image=decode(p))["image"]
        first = time.perf_counter() - t

        t = time.perf_counter()
        decoded = [decode(p) for p in paths]
        decode_only = time.perf_counter() - t

        t = time.perf_counter()
        for img in decoded:
            aug(image=img)["image"]
        aug_only = time.perf_counter() - t

        cache = PreprocessCache(tmp / "cache", manifest, rows, 1, size)
        t = time.perf_counter()
        cache.fill()
        fill = time.perf_counter() - t

        cache = PreprocessCache(tmp / "cache", manifest, rows, 1, size)  # a second stage: fresh object
        t = time.perf_counter()
        assert cache.ready()
        for i in range(len(cache)):
            aug(image=cache[i])["image"]
        cached = time.perf_counter() - t

        t = time.perf_counter()
        for i in range(len(cache)):
            cache[i]
        read_only = time.perf_counter() - t
        mb = cache.path.stat().st_size / 2**20


    rate = lambda s: n / s  # noqa: E731
    speedup = first / cached
    verdict = "met" if speedup >= 5 else "NOT met"
    return "\n".join([
        HEADING,
        "",
        f"Machine: {machine()}, "
        f"single process; {datetime.date.today().isoformat()}.",
        f"Input: {n} DICOM files {source_size}x{source_size} (resized to {size}), 16-bit MONOCHROME2, "
        f"explicit VR little endian, "
        f"made from {source}; train_view({size}, AugmentConfig()) augmentation.",
        "",
        "| what | seconds | images/s |",
        "|---|---|---|",
        f"| (a) first pass: read_image + resize + augmentation | {first:.2f} | {rate(first):.0f} |",
        f"| - decode + resize only | {decode_only:.2f} | {rate(decode_only):.0f} |",
        f"| - augmentation only | {aug_only:.2f} | {rate(aug_only):.0f} |",
        f"| (b) cache fill (decode + resize + write, {mb:.1f} MiB uint16) | {fill:.2f} | {rate(fill):.0f} |",
        f"| (c) cached pass: cache[i] + augmentation | {cached:.2f} | {rate(cached):.0f} |",
        f"| - cache[i] only | {read_only:.3f} | {rate(read_only):.0f} |",
        "",
        f"Cached pass vs first pass: {speedup:.1f}x (target >= 5x: {verdict}). Augmentation alone "
        f"(on already decoded arrays) took {aug_only / first:.0%} of the first pass; what the cache "
        f"removes is the decode + resize share. Timings on a shared machine vary by about +-20%.",
        "",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    # archives hold CR/DX images of 2000-3000 px; 1024 keeps the benchmark short and is still conservative
    ap.add_argument("--source-size", type=int, default=1024, help="pixels of the DICOM files written")
    ap.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = ap.parse_args()
    section = run(args.n, args.size, args.source_size)
    print(section)
    update_section(HEADING, section, args.results)


if __name__ == "__main__":
    main()
