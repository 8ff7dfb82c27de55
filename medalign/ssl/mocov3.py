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

from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead
from torch import nn

from medalign.config import PretrainConfig
from medalign.config.ssl import MoCoV3Config
from medalign.models.backbones import Backbone
from medalign.ssl import BUILDERS
from medalign.ssl.momentum import OnlineTarget, two_views


class MoCoV3(OnlineTarget):
    def __init__(self, cfg: MoCoV3Config, make_backbone):
        def projector(dim: int) -> nn.Module:
            return MoCoProjectionHead(dim, cfg.hidden_dim, cfg.out_dim, num_layers=3, batch_norm=True)

        super().__init__(cfg, make_backbone, projector,
                         lambda: MoCoProjectionHead(cfg.out_dim, cfg.hidden_dim, cfg.out_dim, num_layers=2,
                                                    batch_norm=True),
                         NTXentLoss(temperature=cfg.temperature, gather_distributed=True))


@BUILDERS.register("mocov3")
def build(method: MoCoV3Config, cfg: PretrainConfig, backbone: Backbone):
    return MoCoV3(method, backbone.create), two_views(cfg, backbone)
