"""Tests for the synthetic demo image generator (medalign.data.demo)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from PIL import Image

from medalign.data import demo

HEADER = ["path", "label", "split", "patient_id", "site"]
SMALL = dict(n_unlabeled=40, n_train=24, n_val=12, n_test=30, img_size=32, seed=3)


def _read(manifest):
    with open(manifest, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def _load(root, row):
    return np.asarray(Image.open(root / row["path"]), dtype=float) / 255.0


def _blur(img, sigma):
    """Separable Gaussian written independently of the module under test."""
    radius = int(math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.pad(img, radius, mode="reflect")
    n = img.shape[0]
    rows = sum(w * padded[i:i + n, :] for i, w in enumerate(k))
    return sum(w * rows[:, i:i + n] for i, w in enumerate(k))


def _ring_contrast(img):
    """How much the brightest spot stands above every point on a ring around it.

    A compact bright blob in dark lung scores high; long structures (spine, ribs,
    body outline) score low because the ring always hits them again somewhere.
    """
    s = _blur(img, 1.0)
    n = s.shape[0]
    d = max(2, round(n / 12))
    q = max(1, round(d / math.sqrt(2)))
    p = np.pad(s, d, mode="edge")
    shifts = [(d, 0), (-d, 0), (0, d), (0, -d), (q, q), (q, -q), (-q, q), (-q, -q)]
    ring_max = np.max([p[d + dy:d + dy + n, d + dx:d + dx + n] for dy, dx in shifts], axis=0)
    return float((s - ring_max).max())


def _cohen_d(a, b):
    return (np.mean(a) - np.mean(b)) / math.sqrt((np.var(a) + np.var(b)) / 2)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_small")
    manifest = demo.generate(root, **SMALL)
    with open(manifest, newline="", encoding="utf-8") as fh:
        return root, manifest, list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def labelled64(tmp_path_factory):
    """Enough 64 px labelled images for the image statistics to mean something."""
    root = tmp_path_factory.mktemp("demo_64")
    manifest = demo.generate(root, n_unlabeled=0, n_train=120, n_val=0, n_test=0, img_size=64, seed=0)
    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return rows, [_load(root, r) for r in rows]


def test_manifest_layout(small):
    root, manifest, rows = small
    assert manifest == root / "manifest.csv"
    assert _read(manifest)[0] == HEADER
    assert not (root / "manifest.csv.tmp").exists()
    expected = {"unlabeled": 40, "train": 24, "val": 12, "test": 30}
    assert {s: sum(r["split"] == s for r in rows) for s in expected} == expected
    assert len(rows) == sum(expected.values())
    assert len({r["path"] for r in rows}) == len(rows)
    for split, n in expected.items():
        part = [r for r in rows if r["split"] == split]
        sites = [r["site"] for r in part]
        assert set(sites) == {"scanner_a", "scanner_b"}, split
        assert abs(sites.count("scanner_a") - sites.count("scanner_b")) <= 2, split
        labels = [r["label"] for r in part]
        if split == "unlabeled":
            assert set(labels) == {""}
        else:
            assert set(labels) == {"normal", "lesion"}, split
            assert labels.count("lesion") == round(n * 0.5), split


def test_images_are_8bit_gray_png_of_requested_size(small):
    root, _, rows = small
    for r in rows:
        assert r["path"].startswith("images/") and r["path"].endswith(".png")
        with Image.open(root / r["path"]) as im:
            assert im.format == "PNG"
            assert im.mode == "L"
            assert im.size == (32, 32)
    # Phantoms, not blank frames: each image spans a real range of grey levels.
    assert all(np.ptp(_load(root, r)) > 0.3 for r in rows[:20])


def test_patients_stay_within_one_split(small):
    _, _, rows = small
    split_of = {}
    for r in rows:
        assert split_of.setdefault(r["patient_id"], r["split"]) == r["split"], r["patient_id"]
    counts = {}
    for r in rows:
        counts[r["patient_id"]] = counts.get(r["patient_id"], 0) + 1
    assert all(pid.startswith("P") and len(pid) == 6 for pid in counts)
    assert max(counts.values()) == 2
    assert 0 < sum(c == 2 for c in counts.values()) <= 0.1 * len(counts)
    # A patient's two scans agree on the finding.
    labels = {}
    for r in rows:
        assert labels.setdefault(r["patient_id"], r["label"]) == r["label"]


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path, small):
    root, manifest, rows = small
    again = demo.generate(tmp_path / "again", **SMALL)
    assert again.read_bytes() == manifest.read_bytes()
    for r in rows:
        assert (tmp_path / "again" / r["path"]).read_bytes() == (root / r["path"]).read_bytes()
    other = demo.generate(tmp_path / "other", **{**SMALL, "seed": 4})
    assert other.read_bytes() != manifest.read_bytes()
    differing = sum((tmp_path / "other" / r["path"]).read_bytes() != (root / r["path"]).read_bytes() for r in rows)
    assert differing == len(rows)


def test_lesion_fraction_and_empty_splits(tmp_path):
    manifest = demo.generate(tmp_path, n_unlabeled=0, n_train=20, n_val=0, n_test=1,
                             img_size=16, lesion_fraction=0.25)
    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["label"] for r in rows if r["split"] == "train"].count("lesion") == 5
    assert sum(r["split"] == "test" for r in rows) == 1
    assert len(list((tmp_path / "images").iterdir())) == 21


def test_lesions_are_visible_but_not_in_mean_intensity(labelled64):
    rows, imgs = labelled64
    lesion = np.array([r["label"] == "lesion" for r in rows])
    ring = np.array([_ring_contrast(i) for i in imgs])
    means = np.array([i.mean() for i in imgs])
    ring_gap, ring_d = ring[lesion].mean() - ring[~lesion].mean(), _cohen_d(ring[lesion], ring[~lesion])
    mean_d = _cohen_d(means[lesion], means[~lesion])
    # Measured at seed 0: ring gap ~0.054 (d ~1.24); mean-intensity d ~-0.18.
    assert ring_gap > 0.02 and ring_d > 0.5, (ring_gap, ring_d)
    assert abs(mean_d) < 0.35, mean_d
    assert abs(mean_d) < ring_d / 2


def test_scanner_b_is_noisier_and_flatter(labelled64):
    rows, imgs = labelled64
    site_b = np.array([r["site"] == "scanner_b" for r in rows])
    c = 64 // 8  # corners are outside the body: what varies there is noise, not anatomy

    def corner_noise(img):
        resid = img - _blur(img, 1.0)
        return np.concatenate([resid[:c, :c], resid[:c, -c:], resid[-c:, :c], resid[-c:, -c:]]).std()

    noise = np.array([corner_noise(i) for i in imgs])
    spread = np.array([np.percentile(i, 98) - np.percentile(i, 2) for i in imgs])
    assert np.median(noise[site_b]) > 1.5 * np.median(noise[~site_b]), noise
    assert np.median(spread[site_b]) < 0.85 * np.median(spread[~site_b]), spread


@pytest.mark.parametrize("bad", [
    {"n_train": -1}, {"n_unlabeled": -5}, {"n_test": 2.5}, {"img_size": 15},
    {"lesion_fraction": -0.1}, {"lesion_fraction": 1.5}, {"lesion_fraction": float("nan")},
])
def test_bad_arguments_raise(tmp_path, bad):
    with pytest.raises(ValueError):
        demo.generate(tmp_path, **{**SMALL, **bad})
    assert not (tmp_path / "manifest.csv").exists()
