"""Deterministic synthetic "chest phantom" images for the quickstart.

The pictures are drawn from a handful of ellipses and noise; they are not real
patients and carry no medical meaning. They exist only so the whole pipeline can
be tried end to end without outside data, and nothing learned from them supports
any medical claim.

Each image shows a body, two dark lung fields, a heart, a spine and faint ribs.
Half of the labelled images carry one bright round nodule in a lung (``lesion``).
Two simulated scanners give the set a domain shift: ``scanner_a`` is crisp and
quiet, ``scanner_b`` has lower contrast, more noise and more blur.
"""

from __future__ import annotations

import csv
import functools
import math
import os
import pathlib

import numpy as np
from PIL import Image

HEADER = ("path", "label", "split", "patient_id", "site")
SITES = ("scanner_a", "scanner_b")
# (gamma, contrast, blur sigma in px at 64 px, noise std): B is the "worse" scanner.
_SCANNERS = {"scanner_a": (1.0, 1.0, 0.3, 0.012), "scanner_b": (1.2, 0.7, 1.2, 0.03)}


def _ellipse(u, v, cx, cy, a, b, edge=0.08):
    """Soft-edged ellipse mask; the ramp avoids aliased, unnaturally sharp borders."""
    r = np.sqrt(((u - cx) / a) ** 2 + ((v - cy) / b) ** 2)
    return np.clip((1.0 - r) / edge + 0.5, 0.0, 1.0)


@functools.lru_cache(maxsize=16)
def _grid(size: int):
    c = (np.arange(size) + 0.5) / size * 2.0 - 1.0  # pixel centres in [-1, 1]
    return np.meshgrid(c, c)  # x to the right, y downwards


@functools.lru_cache(maxsize=16)
def _blur_matrix(size: int, sigma: float) -> np.ndarray:
    """Gaussian blur as a matrix with reflected borders, so blur is two small matmuls."""
    if sigma <= 0:
        return np.eye(size)
    radius = max(1, math.ceil(3 * sigma))
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    rows = np.repeat(np.arange(size), offsets.size)
    cols = (np.arange(size)[:, None] + offsets).ravel()
    cols = np.abs(cols)  # reflect at 0 ...
    cols = np.where(cols > size - 1, 2 * (size - 1) - cols, cols)  # ... and at the far edge
    m = np.zeros((size, size))
    # The clip only matters for kernels wider than a tiny image.
    np.add.at(m, (rows, np.clip(cols, 0, size - 1)), np.tile(weights, size))
    return m


def _anatomy(rng: np.random.Generator, lesion: bool, size: int) -> dict:
    """Per-patient shape parameters, so two scans of one patient look alike."""
    u = rng.uniform
    lung_cy, lung_b = u(-0.14, -0.02), u(0.48, 0.6)
    anat = dict(
        body=(u(-0.03, 0.03), u(0.0, 0.08), u(0.8, 0.92), u(0.88, 0.98)),
        lungs=[(s * u(0.32, 0.42), lung_cy + u(-0.03, 0.03), u(0.22, 0.3), lung_b * u(0.93, 1.07))
               for s in (-1, 1)],
        heart=(u(0.08, 0.16), u(0.3, 0.4), u(0.27, 0.34), u(0.21, 0.27)),
        spine_w=u(0.06, 0.09), rib_gap=u(0.19, 0.24), rib_phase=u(0, 1), rib_bend=u(0.3, 0.5),
        levels=(u(0.12, 0.22), u(0.45, 0.55), u(0.58, 0.68), u(0.75, 0.85)),  # lung, tissue, heart, bone
        nodule=None,
    )
    if lesion:
        radius = u(size / 20, size / 11) * 2 / size  # pixels -> normalised units
        hx, hy, ha, hb = anat["heart"]
        while True:  # resample until the nodule sits in aerated lung, clear of the heart
            cx, cy, a, b = anat["lungs"][rng.integers(2)]
            # sqrt keeps the point uniform over the ellipse; 0.5 keeps the blob off the lung edge.
            rho, phi = 0.5 * math.sqrt(u()), u(0, 2 * math.pi)
            nx, ny = cx + rho * a * math.cos(phi), cy + rho * b * math.sin(phi)
            if ((nx - hx) / (ha + radius)) ** 2 + ((ny - hy) / (hb + radius)) ** 2 > 1:
                break
        anat["nodule"] = (nx, ny, radius, u(0.28, 0.4))
    return anat


def _phantom(anat: dict, rng: np.random.Generator, size: int) -> np.ndarray:
    """Draw one noiseless image; the pose jitter makes repeat scans of a patient differ."""
    x, y = _grid(size)
    t, s = math.radians(rng.uniform(-4, 4)), rng.uniform(0.95, 1.05)
    x, y = x - rng.uniform(-0.04, 0.04), y - rng.uniform(-0.04, 0.04)
    u = (math.cos(t) * x + math.sin(t) * y) / s
    v = (-math.sin(t) * x + math.cos(t) * y) / s
    lung_lv, tissue, heart_lv, bone = anat["levels"]

    body = _ellipse(u, v, *anat["body"])
    # The background sits above zero, like a real detector floor, so noise is not clipped away.
    img = 0.1 + body * (tissue - 0.1 + 0.08 * np.clip(v, 0, 1))  # denser towards the abdomen
    lungs = np.maximum(*(_ellipse(u, v, *lung) for lung in anat["lungs"])) * body
    lung_tone = lung_lv + 0.05 * v  # apices look darker than the bases
    img = img + lungs * (lung_tone - img)
    # Posterior ribs: bands bending down laterally, only visible against the dark lungs.
    phase = (v - anat["rib_bend"] * u**2) / anat["rib_gap"] + anat["rib_phase"]
    img = img + 0.09 * lungs * np.clip(1.0 - np.abs(phase - np.round(phase)) / 0.16, 0, 1)
    heart = _ellipse(u, v, *anat["heart"])
    img = img + heart * (heart_lv - img)
    spine = np.clip((anat["spine_w"] - np.abs(u)) / 0.03 + 0.5, 0, 1) * body
    vertebrae = 0.04 * np.cos(v * 2 * math.pi / 0.14)  # faint vertebral body pattern
    img = img + spine * (1.0 - 0.6 * heart) * (bone + vertebrae - img)
    if anat["nodule"] is not None:
        img = _add_lesion(img, u, v, *anat["nodule"])
    # Exposure differs per acquisition; this is what keeps mean intensity uninformative.
    return img * rng.uniform(0.85, 1.15) + rng.uniform(-0.03, 0.03)


def _add_lesion(img, u, v, cx, cy, radius, amplitude):
    sigma = radius / 1.5  # the blob is still ~1/3 of its peak at `radius`, so that is its visible edge
    return img + amplitude * np.exp(-((u - cx) ** 2 + (v - cy) ** 2) / (2 * sigma**2))


def _scanner(img: np.ndarray, site: str, rng: np.random.Generator) -> np.ndarray:
    """Apply a site's contrast curve, blur and noise, then quantise to 8 bits."""
    gamma, contrast, blur_px, noise = _SCANNERS[site]
    size = img.shape[0]
    img = np.clip(img, 0, 1) ** gamma
    img = 0.3 + contrast * (img - 0.3)  # pivot near the mean so B is flatter, not just brighter
    m = _blur_matrix(size, round(blur_px * size / 64, 3))
    img = m @ img @ m.T + rng.normal(0.0, noise, img.shape)
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def _plan_split(rng: np.random.Generator, n: int, lesion_fraction: float):
    """Labels, patient slots and sites for one split, balanced and reproducible."""
    n_lesion = round(n * lesion_fraction)
    lesion = np.arange(n) < n_lesion
    owner = np.arange(n)
    # ~5 % of patients get a second scan; pair within a class so both scans agree.
    starts = [i for i in range(0, n - 1, 2) if lesion[i] == lesion[i + 1]]
    for i in rng.permutation(starts)[: round(n / 21)]:
        owner[i + 1] = owner[i]
    site = np.zeros(n, dtype=int)
    for cls in (True, False):  # balance scanners within each class so site does not predict label
        idx = np.flatnonzero(lesion == cls)
        site[idx] = rng.permutation(np.arange(idx.size) % 2)
    order = rng.permutation(n)
    return lesion[order], owner[order], site[order]


def _validate(counts: dict, img_size, lesion_fraction) -> None:
    for name, value in counts.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if not isinstance(img_size, (int, np.integer)) or img_size < 16:
        raise ValueError(f"img_size must be an integer >= 16, got {img_size!r}")
    if not 0.0 <= lesion_fraction <= 1.0:  # also rejects NaN
        raise ValueError(f"lesion_fraction must be within [0, 1], got {lesion_fraction!r}")


def generate(out_dir: pathlib.Path, *, n_unlabeled: int = 600, n_train: int = 120, n_val: int = 60,
             n_test: int = 200, img_size: int = 64, lesion_fraction: float = 0.5, seed: int = 0) -> pathlib.Path:
    """Writes PNG images under out_dir/images/ and out_dir/manifest.csv; returns the manifest path."""
    counts = {"n_unlabeled": n_unlabeled, "n_train": n_train, "n_val": n_val, "n_test": n_test}
    _validate(counts, img_size, lesion_fraction)
    out_dir = pathlib.Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    img_size = int(img_size)

    rows, n_img, n_pat = [], 0, 0
    for split, count in zip(("unlabeled", "train", "val", "test"), counts.values()):
        lesion, owner, site = _plan_split(rng, int(count), float(lesion_fraction))
        patients = {}  # slot -> (patient id, anatomy); ids are unique across splits
        for is_lesion, slot, site_idx in zip(lesion, owner, site):
            if slot not in patients:
                n_pat += 1
                patients[slot] = (f"P{n_pat:05d}", _anatomy(rng, bool(is_lesion), img_size))
            pid, anat = patients[slot]
            pixels = _scanner(_phantom(anat, rng, img_size), SITES[site_idx], rng)
            n_img += 1
            rel = f"images/img_{n_img:05d}.png"
            Image.fromarray(pixels).save(out_dir / rel, format="PNG")
            label = "" if split == "unlabeled" else ("lesion" if is_lesion else "normal")
            rows.append((rel, label, split, pid, SITES[site_idx]))

    # Manifest last, via rename, so a reader never sees a manifest pointing at missing images.
    manifest = out_dir / "manifest.csv"
    tmp = out_dir / "manifest.csv.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(rows)
    os.replace(tmp, manifest)
    return manifest
