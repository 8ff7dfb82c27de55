"""BYOL: bootstrap your own latent (Grill et al. 2020, github.com/deepmind/deepmind-research/tree/master/byol).

Wiring of lightly's BYOLProjectionHead, BYOLPredictionHead, NegativeCosineSimilarity and
update_momentum: the online network predicts the momentum network's projection of the other view;
no negatives. The target network's BatchNorm buffers follow the online one (see momentum.follow).
"""
from __future__ import annotations

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.utils.debug import std_of_l2_normalized
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from medalign.config import PretrainConfig
from medalign.config.ssl import BYOLConfig
from medalign.models.backbones import Backbone
from medalign.ssl import BUILDERS
from medalign.ssl.momentum import follow, momentum_copy, two_views


class BYOL(nn.Module):
    def __init__(self, cfg: BYOLConfig, make_backbone):
        super().__init__()
        self.cfg = cfg
        self.encoder = make_backbone()
        dim = self.encoder.num_features
        self.projector = BYOLProjectionHead(dim, cfg.hidden_dim, cfg.out_dim)
        self.predictor = BYOLPredictionHead(cfg.out_dim, cfg.hidden_dim, cfg.out_dim)
        self.momentum_encoder = momentum_copy(make_backbone, self.encoder)
        self.momentum_projector = momentum_copy(lambda: BYOLProjectionHead(dim, cfg.hidden_dim, cfg.out_dim),
                                                self.projector)
        self.criterion = NegativeCosineSimilarity()

    def forward(self, batch):
        (x0, x1), _ = batch
        f0, f1 = self.encoder(x0), self.encoder(x1)
        p0, p1 = self.predictor(self.projector(f0)), self.predictor(self.projector(f1))
        with torch.no_grad():
            z0, z1 = (self.momentum_projector(self.momentum_encoder(x)) for x in (x0, x1))
        loss = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        return {"loss": loss, "embedding_std": std_of_l2_normalized(f0.detach())}

    def after_optimizer_step(self, step: int, total: int) -> None:
        m = cosine_schedule(step, total, self.cfg.momentum, 1.0)
        follow(self.encoder, self.momentum_encoder, m)
        follow(self.projector, self.momentum_projector, m)

    def backbone(self) -> nn.Module:
        return self.encoder  # the paper keeps the online encoder


@BUILDERS.register("byol")
def build(method: BYOLConfig, cfg: PretrainConfig, backbone: Backbone):
    return BYOL(method, backbone.create), two_views(cfg, backbone)
