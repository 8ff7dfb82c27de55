"""Augmentation presets on albumentations, applied to float32 (H, W, C) images in [0, 1].

Grayscale stays 1 channel all the way; intensity changes replace the colour jitter of natural-image
recipes, which has no meaning for a single channel.
"""
from __future__ import annotations

import json

import albumentations as A
import torch
from albumentations.pytorch import ToTensorV2
from torch.utils.data import get_worker_info

from medalign.config import AugmentConfig


def _finish(mean: tuple[float, ...], std: tuple[float, ...], zscore: bool) -> list:
    if zscore:  # each image to mean 0, std 1 on its own (config: data.intensity.zscore)
        return [A.Normalize(normalization="image"), ToTensorV2()]
    return [A.Normalize(mean=mean, std=std, max_pixel_value=1.0), ToTensorV2()]


def train_view(size: int, aug: AugmentConfig, mean, std, scale: tuple[float, float] | None = None,
               zscore: bool = False) -> A.Compose:
    return A.Compose([
        A.RandomResizedCrop(size=(size, size), scale=scale or aug.crop_scale),
        A.HorizontalFlip(p=0.5 if aug.hflip else 0.0),
        *_modality(aug),
        A.RandomBrightnessContrast(aug.brightness_contrast, aug.brightness_contrast, p=0.8),
        A.GaussianBlur(sigma_limit=(0.1, 1.5), p=aug.blur_p),
        # ultrasound's noise is speckle, multiplicative; the others' is additive sensor noise
        A.MultiplicativeNoise((0.8, 1.2), elementwise=True, p=aug.noise_p) if aug.preset == "ultrasound"
        else A.GaussNoise(std_range=(0.01, 0.05), p=aug.noise_p),
        *_finish(mean, std, zscore),
    ])


def _modality(aug: AugmentConfig) -> list:
    """Geometry a modality tolerates: a probe can be held either way up; a slice is rarely level."""
    if aug.preset == "ultrasound":
        return [A.VerticalFlip(p=0.5)]
    if aug.preset in ("ct", "mr"):
        shading = [A.RandomGamma((80, 120), p=0.3)] if aug.preset == "mr" else []
        return [A.Affine(rotate=(-10, 10), p=0.5), *shading]
    return []


def eval_view(size: int, mean, std, zscore: bool = False) -> A.Compose:
    return A.Compose([A.Resize(size, size), *_finish(mean, std, zscore)])


class MultiView:
    """Several augmented views of one image, as lightly's MultiViewTransform but for albumentations."""

    def __init__(self, views: list[A.Compose]):
        self.views = views

    def __call__(self, image):
        return [v(image=image)["image"] for v in self.views]

    def reseed(self, seed: int) -> "MultiView":
        # albumentations ignores the global seeds: each Compose holds its own generator
        for i, v in enumerate(self.views):
            v.set_random_seed(seed + i)
        return self

    def rng_state(self) -> str:
        """Every generator of every transform, as JSON (resume files hold no numpy objects)."""
        return json.dumps([[t.random_generator.bit_generator.state, t.py_random.getstate()]
                           for t in self._seeded()])

    def set_rng_state(self, state: str) -> None:
        for t, (np_state, (version, internal, gauss)) in zip(self._seeded(), json.loads(state), strict=True):
            t.random_generator.bit_generator.state = np_state
            t.py_random.setstate((version, tuple(internal), gauss))

    def _seeded(self) -> list:
        found = []

        def walk(t):
            found.append(t)
            for child in getattr(t, "transforms", []):
                walk(child)
        for v in self.views:
            walk(v)
        return found


class Single(MultiView):
    def __init__(self, view: A.Compose):
        super().__init__([view])

    def __call__(self, image):
        return self.views[0](image=image)["image"]


def seed_worker(worker_id: int) -> None:
    """DataLoader workers start from copies of one seeded transform: give each its own stream.

    torch.initial_seed() in a worker derives from the seeded main process, so runs stay reproducible.
    """
    transform = getattr(get_worker_info().dataset, "transform", None)
    if isinstance(transform, MultiView):
        transform.reseed(torch.initial_seed() % 2**31)
