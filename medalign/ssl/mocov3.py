"""MoCo v3: an empirical study of training self-supervised ViTs (Chen et al. 2021,
github.com/facebookresearch/moco-v3).

Wiring of lightly's MoCoProjectionHead (3-layer projector, 2-layer predictor, BN in every layer as
in the paper), NTXentLoss and update_momentum. No memory bank: the keys are the momentum encoder's
outputs for the other view of the same batch, gathered across ranks (`gather_distributed`), so
each GPU contrasts against the whole global batch as the paper does. NTXentLoss also counts the
other queries of the batch as negatives, which the paper's loss does not; with large batches the
difference is small.
"""
from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead
from lightly.utils.debug import std_of_l2_normalized
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from medalign.config import PretrainConfig
from medalign.config.ssl import MoCoV3Config
from medalign.models.backbones import Backbone
from medalign.ssl import BUILDERS
from medalign.ssl.momentum import follow, momentum_copy, two_views


class MoCoV3(nn.Module):
    def __init__(self, cfg: MoCoV3Config, make_backbone):
        super().__init__()
        self.cfg = cfg
        self.encoder = make_backbone()
        self.projector = MoCoProjectionHead(self.encoder.num_features, cfg.hidden_dim, cfg.out_dim,
                                            num_layers=3, batch_norm=True)
        self.predictor = MoCoProjectionHead(cfg.out_dim, cfg.hidden_dim, cfg.out_dim, num_layers=2, batch_norm=True)
        self.momentum_encoder = momentum_copy(make_backbone, self.encoder)
        self.momentum_projector = momentum_copy(lambda: MoCoProjectionHead(
            self.encoder.num_features, cfg.hidden_dim, cfg.out_dim, num_layers=3, batch_norm=True), self.projector)
        self.criterion = NTXentLoss(temperature=cfg.temperature, gather_distributed=True)

    def forward(self, batch):
        (x0, x1), _ = batch
        f0, f1 = self.encoder(x0), self.encoder(x1)
        q0, q1 = self.predictor(self.projector(f0)), self.predictor(self.projector(f1))
        with torch.no_grad():
            k0, k1 = (self.momentum_projector(self.momentum_encoder(x)) for x in (x0, x1))
        loss = 0.5 * (self.criterion(q0, k1) + self.criterion(q1, k0))  # symmetric, as in the paper
        return {"loss": loss, "embedding_std": std_of_l2_normalized(f0.detach())}

    def after_optimizer_step(self, step: int, total: int) -> None:
        m = cosine_schedule(step, total, self.cfg.momentum, 1.0)
        follow(self.encoder, self.momentum_encoder, m)
        follow(self.projector, self.momentum_projector, m)

    def backbone(self) -> nn.Module:
        return self.encoder  # the paper evaluates the base (online) encoder


@BUILDERS.register("mocov3")
def build(method: MoCoV3Config, cfg: PretrainConfig, backbone: Backbone):
    return MoCoV3(method, backbone.create), two_views(cfg, backbone)
