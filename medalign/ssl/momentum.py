"""What the momentum-teacher methods share: a frozen copy of a student (DINO, DINOv2, MoCo v3,
BYOL), one that follows it by EMA buffers included (MoCo v3, BYOL), and the two views they contrast."""
from __future__ import annotations

import torch
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.debug import std_of_l2_normalized
from lightly.utils.scheduler import cosine_schedule
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


class OnlineTarget(nn.Module):
    """An online encoder, projector and predictor that predicts a momentum copy's projection of the
    other view, symmetrically (BYOL, MoCo v3); the methods differ in their heads and their loss."""

    def __init__(self, cfg, make_backbone, make_projector, make_predictor, criterion: nn.Module):
        super().__init__()
        self.cfg = cfg  # a method config with `momentum`, the EMA start
        self.encoder = make_backbone()
        dim = self.encoder.num_features
        self.projector = make_projector(dim)
        self.predictor = make_predictor()
        self.momentum_encoder = momentum_copy(make_backbone, self.encoder)
        self.momentum_projector = momentum_copy(lambda: make_projector(dim), self.projector)
        self.criterion = criterion

    def forward(self, batch):
        (x0, x1), _ = batch
        f0, f1 = self.encoder(x0), self.encoder(x1)
        q0, q1 = self.predictor(self.projector(f0)), self.predictor(self.projector(f1))
        with torch.no_grad():
            k0, k1 = (self.momentum_projector(self.momentum_encoder(x)) for x in (x0, x1))
        loss = 0.5 * (self.criterion(q0, k1) + self.criterion(q1, k0))
        return {"loss": loss, "embedding_std": std_of_l2_normalized(f0.detach())}

    def after_optimizer_step(self, step: int, total: int) -> None:
        m = cosine_schedule(step, total, self.cfg.momentum, 1.0)
        follow(self.encoder, self.momentum_encoder, m)
        follow(self.projector, self.momentum_projector, m)

    def backbone(self) -> nn.Module:
        return self.encoder  # both papers keep the online encoder
