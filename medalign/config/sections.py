"""Config sections that several stages share: backbone, optimiser, augmentation, runtime, logging, intensity."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from medalign.config.loading import Section, cosmetic


class BackboneConfig(Section):
    name: str = Field("vit_tiny_patch16_224", description="timm model name")
    kwargs: dict[str, Any] = Field(default_factory=dict,
                                   description="extra timm.create_model arguments, e.g. {patch_size: 8}")
    pretrained: bool = Field(False, description="download timm's pretrained weights (needs internet)")
    weights: str | None = Field(None, description="a named offline starting point from an installed package "
                                "(`medalign weights` lists them); sets the architecture")
    checkpoint: str | None = Field(None, description="local weights: a medalign checkpoint folder or "
                                   "stage output, or a .safetensors/.pth file in timm layout")
    in_chans: int = Field(1, description="input channels; grayscale stays 1 unless the weights need 3")
    img_size: int = Field(64, description="input size in pixels")


class OptimConfig(Section):
    lr: float = Field(5e-4, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.04, ge=0, description="not applied to biases, norms and the model's "
                                "no_weight_decay() tokens (pos_embed, cls_token)")
    layer_decay: float | None = Field(None, gt=0, le=1, description="layer-wise LR decay (BEiT/MAE "
                                      "fine-tuning): each block closer to the input gets this factor more")
    epochs: int = Field(10, ge=1)
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up, then cosine decay to 0")
    clip_grad: float | None = Field(3.0, description="max gradient norm; null disables clipping")
    accumulate: int = Field(1, ge=1, description="batches per optimizer step (gradient accumulation)")


class AugmentConfig(Section):
    """Intensity and geometry augmentation; colour jitter is left out on purpose (grayscale)."""
    enabled: bool = Field(True, description="false: the evaluation view only")
    preset: Literal["xray", "ultrasound", "ct", "mr"] = Field(
        "xray", description="modality: xray (no flips: anatomy is lateralised), ultrasound (vertical flips, "
                            "multiplicative speckle), ct / mr slices (small rotations; mr adds gamma for coil shading)")
    crop_scale: tuple[float, float] = Field((0.4, 1.0), description="RandomResizedCrop area range")
    hflip: bool = Field(False, description="left-right flips (any preset); off by default since anatomy is lateralised")
    brightness_contrast: float = Field(0.3, ge=0, description="max brightness/contrast change")
    blur_p: float = Field(0.3, ge=0, le=1)
    noise_p: float = Field(0.3, ge=0, le=1)


class Runtime(Section):
    device: str = cosmetic("auto", "auto, cpu, cuda or cuda:N")
    num_workers: int = cosmetic(0, "DataLoader worker processes")
    amp: bool = Field(True, description="bfloat16 autocast on CUDA (ignored on CPU)")
    # the layout changes speed, not what is computed (beyond float rounding), like the device
    channels_last: bool = cosmetic(True, "convolution weights in NHWC layout, which oneDNN and cuDNN run "
                                   "faster (on 2 CPU cores: EfficientNet-Lite0 1.6-1.9x, ResNet-18 1.0-1.2x, ViTs 1.0x)")
    # resuming gives the same result as not stopping, so how often is not part of the cache key
    checkpoint_every_steps: int = cosmetic(0, "write resume state every N optimizer steps (0: off)")
    checkpoint_every_minutes: float = cosmetic(10.0, "write resume state every M minutes (0: off)")


class Logging(Section):
    """Dashboards besides log.jsonl (pip install 'medalign[tracking]'); they show the run, they do not
    change it, so none of this is part of the cache key."""
    tensorboard: bool = cosmetic(False, "write TensorBoard event files to OUT/tensorboard")
    mlflow_uri: str | None = cosmetic(None, "MLflow tracking URI: a folder or file: URI (offline), sqlite: "
                                      "(with sqlalchemy and alembic installed) or an http(s):// server; null: off")
    mlflow_experiment: str = cosmetic("medalign", "MLflow experiment the run is filed under")


# the presets of medalign.data.readers.CT_WINDOWS (a test keeps the two in step)
CTWindow = Literal["lung", "mediastinum", "bone", "brain"]


class Intensity(Section):
    """How pixel values become [0, 1] before augmentation, per modality; saved with the model."""
    window: CTWindow | tuple[float, float] | None = Field(
        None, description="CT window in HU (lung, mediastinum, bone, brain or [centre, width]); default: the "
                          "DICOM's own window, NIfTI's percentile scaling")
    percentiles: tuple[float, float] | None = Field(
        None, description="clip each image to these percentiles, then [0, 1] (MR, X-ray), e.g. [0.5, 99.5]")
    zscore: bool = Field(False, description="standardise each image (mean 0, std 1) instead of the backbone's mean/std")

    def reader_args(self) -> dict:
        """What `read_image` and the preprocessing cache take; zscore acts later, in the transform."""
        return {"window": self.window, "percentiles": self.percentiles}


ON_ERROR_HELP = "a missing or unreadable image: fail (name them all) or skip (listed in skipped.csv)"
CACHE_HELP = ("decode and resize each image once into a memory-mapped cache ($MEDALIGN_CACHE, "
              "default ~/.cache/medalign); later epochs and stages read it")


FOLD_HELP = ("k-fold cross-validation over the manifest's `fold` column (`manifest split --folds`): fold k's rows "
             "are the test split, fold k+1's (mod the number of folds) the val split, the other folds' the train "
             "split; rows without a fold keep only the unlabeled split")


FINGERPRINT_HELP = ("what of each image enters the cache key: stat (size and mtime: fast; a copy that resets "
                    "mtimes reruns) or content (sha256 of the bytes, remembered by size, mtime and ctime so a "
                    "second pass reads nothing)")


class DataSection(Section):
    """What every stage's data section holds besides its splits."""
    manifest: str = Field(..., description="manifest CSV")
    on_error: Literal["fail", "skip"] = Field("fail", description=ON_ERROR_HELP)
    cache: bool = Field(False, description=CACHE_HELP)
    batch_size: int = Field(64, ge=1)
    fold: int | None = Field(None, ge=0, description=FOLD_HELP)
    # cosmetic: the mode shows in the input's fingerprint itself, and outputs made before it existed keep their keys
    fingerprint: Literal["stat", "content"] = cosmetic("stat", FINGERPRINT_HELP)


class TrainingData(DataSection):
    """Stages that train choose the intensity handling; evaluation reuses the model's own."""
    intensity: Intensity = Intensity()


class MonitorConfig(Section):
    """While pretraining: k-NN on frozen features of a labeled manifest after every epoch (log.jsonl),
    and a warning when the label-free collapse signal (embedding_std x sqrt(dim), ~1 healthy) sinks."""
    manifest: str | None = Field(None, description="labeled manifest for the k-NN monitor (null: off)")
    bank_split: str = "train"
    eval_split: str = "val"
    k: int = Field(20, ge=1)
    temperature: float = Field(0.1, gt=0)
    collapse_below: float = Field(0.2, ge=0, description="warn when embedding_std x sqrt(dim) falls below this")
