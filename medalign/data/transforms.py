"""Augmentation presets on albumentations, applied to float32 (H, W, C) images in [0, 1].

Grayscale stays 1 channel all the way; intensity changes replace the colour jitter of natural-image
recipes, which has no meaning for a single channel.
"""
from __future__ import annotations

import albumentations as A
from albumentations.pytorch import ToTensorV2

from medalign.config import AugmentConfig


def _finish(mean: tuple[float, ...], std: tuple[float, ...]) -> list:
    return [A.Normalize(mean=mean, std=std, max_pixel_value=1.0), ToTensorV2()]


def train_view(size: int, aug: AugmentConfig, mean, std, scale: tuple[float, float] | None = None) -> A.Compose:
    return A.Compose([
        A.RandomResizedCrop(size=(size, size), scale=scale or aug.crop_scale),
        A.HorizontalFlip(p=0.5 if aug.hflip else 0.0),
        A.RandomBrightnessContrast(aug.brightness_contrast, aug.brightness_contrast, p=0.8),
        A.GaussianBlur(sigma_limit=(0.1, 1.5), p=aug.blur_p),
        A.GaussNoise(std_range=(0.01, 0.05), p=aug.noise_p),
        *_finish(mean, std),
    ])


def eval_view(size: int, mean, std) -> A.Compose:
    return A.Compose([A.Resize(size, size), *_finish(mean, std)])


class MultiView:
    """Several augmented views of one image, as lightly's MultiViewTransform but for albumentations."""

    def __init__(self, views: list[A.Compose]):
        self.views = views

    def __call__(self, image):
        return [v(image=image)["image"] for v in self.views]


class Single:
    def __init__(self, view: A.Compose):
        self.view = view

    def __call__(self, image):
        return self.view(image=image)["image"]
