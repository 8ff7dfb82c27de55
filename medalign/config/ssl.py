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
