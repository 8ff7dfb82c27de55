"""Self-supervised method configs, one class each, filed in METHODS under the name YAML uses."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from medalign.config.loading import Section
from medalign.registry import Registry

METHODS: Registry[type[Section]] = Registry("SSL method")


@METHODS.register("dino")
class DinoConfig(Section):
    """DINO (Caron et al. 2021) on lightly's DINOLoss and DINOProjectionHead."""
    name: Literal["dino"] = "dino"
    out_dim: int = Field(2048, description="prototypes; 65536 in the paper, far fewer suit small sets")
    hidden_dim: int = 512
    bottleneck_dim: int = 128
    n_local_crops: int = Field(4, ge=0)
    local_crop_scale: tuple[float, float] = (0.1, 0.4)
    teacher_momentum: float = Field(0.996, description="EMA start; cosine-scheduled to 1")
    teacher_temp: float = 0.04
    student_temp: float = 0.1
    freeze_last_layer_epochs: int = Field(1, ge=0, description="epochs during which the head's last "
                                          "layer gets no gradient (stabilises the start, as in the paper)")


@METHODS.register("simclr")
class SimCLRConfig(Section):
    """SimCLR (Chen et al. 2020) on lightly's NTXentLoss, negatives gathered across ranks."""
    name: Literal["simclr"] = "simclr"
    out_dim: int = 128
    hidden_dim: int = 512
    temperature: float = 0.1


@METHODS.register("mocov3")
class MoCoV3Config(Section):
    """MoCo v3 (Chen et al. 2021): momentum encoder, InfoNCE on lightly's NTXentLoss, no memory bank."""
    name: Literal["mocov3"] = "mocov3"
    out_dim: int = Field(256, description="256 in the paper")
    hidden_dim: int = Field(1024, description="4096 in the paper; smaller suits small sets")
    temperature: float = Field(0.2, description="0.2 for ViTs in the paper (1.0 for ResNets)")
    momentum: float = Field(0.99, description="EMA start; cosine-scheduled to 1")


@METHODS.register("byol")
class BYOLConfig(Section):
    """BYOL (Grill et al. 2020): online network predicts a momentum target, no negatives."""
    name: Literal["byol"] = "byol"
    out_dim: int = Field(256, description="256 in the paper")
    hidden_dim: int = Field(1024, description="4096 in the paper; smaller suits small sets")
    momentum: float = Field(0.99, description="EMA start (0.996 in the paper); cosine-scheduled to 1")


@METHODS.register("mae")
class MAEConfig(Section):
    """MAE (He et al. 2022): reconstruct masked patches from the visible ones; ViTs only."""
    name: Literal["mae"] = "mae"
    mask_ratio: float = Field(0.75, gt=0, lt=1)
    decoder_dim: int = Field(128, description="512 in the paper")
    decoder_depth: int = Field(2, ge=1, description="8 in the paper")
    decoder_heads: int = Field(4, ge=1)
    norm_pix_loss: bool = Field(True, description="targets normalised per patch, as the paper recommends")


@METHODS.register("dinov2")
class DINOv2Config(Section):
    """DINOv2-style (Oquab et al. 2023): DINO's image loss + iBOT's masked-patch loss + KoLeo; ViTs only."""
    name: Literal["dinov2"] = "dinov2"
    out_dim: int = Field(2048, description="prototypes; 65536 in the paper, far fewer suit small sets")
    hidden_dim: int = 512
    bottleneck_dim: int = 128
    n_local_crops: int = Field(2, ge=0)
    local_crop_scale: tuple[float, float] = (0.1, 0.4)
    teacher_momentum: float = Field(0.992, description="EMA start; cosine-scheduled to 1")
    teacher_temp: float = 0.04
    student_temp: float = 0.1
    ibot_weight: float = Field(1.0, ge=0, description="weight of the masked-patch (iBOT) loss")
    koleo_weight: float = Field(0.1, ge=0, description="weight of the KoLeo spreading term")
    freeze_last_layer_epochs: int = Field(1, ge=0, description="epochs during which the heads' last "
                                          "layer gets no gradient, as DINO does")
