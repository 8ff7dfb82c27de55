"""What the momentum-teacher methods share: a frozen copy of a student (DINO, DINOv2, MoCo v3,
BYOL), one that follows it by EMA buffers included (MoCo v3, BYOL), and the two views they contrast."""
from __future__ import annotations

import torch
from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import nn

from medalign.config import PretrainConfig
from medalign.data.transforms import MultiView, train_view
from medalign.models.backbones import Backbone


def momentum_copy(make, student: nn.Module) -> nn.Module:
    """A frozen copy of `student` built by `make` (deepcopy cannot copy every wrapper or weight norm)."""
    teacher = make()
    teacher.load_state_dict(student.state_dict())
    deactivate_requires_grad(teacher)
    return teacher


@torch.no_grad()
def follow(student: nn.Module, teacher: nn.Module, m: float) -> None:
    """EMA of the parameters (lightly's update_momentum), and the student's buffers copied as they
    are: update_momentum skips buffers, so a BatchNorm teacher would otherwise keep the running
    statistics of its own forwards, never those of the network it averages."""
    update_momentum(student, teacher, m)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)


def two_views(cfg: PretrainConfig, backbone: Backbone) -> MultiView:
    view = train_view(backbone.img_size, cfg.augment, backbone.mean, backbone.std, zscore=cfg.data.intensity.zscore)
    return MultiView([view, view])
