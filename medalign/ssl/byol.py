"""BYOL: bootstrap your own latent (Grill et al. 2020, github.com/deepmind/deepmind-research/tree/master/byol).

Wiring of lightly's BYOLProjectionHead, BYOLPredictionHead, NegativeCosineSimilarity and
update_momentum: the online network predicts the momentum network's projection of the other view;
no negatives. The target network's BatchNorm buffers follow the online one (see momentum.follow).
"""
from __future__ import annotations

from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead

from medalign.config import PretrainConfig
from medalign.config.ssl import BYOLConfig
from medalign.models.backbones import Backbone
from medalign.ssl import BUILDERS
from medalign.ssl.momentum import OnlineTarget, two_views


class BYOL(OnlineTarget):
    def __init__(self, cfg: BYOLConfig, make_backbone):
        super().__init__(cfg, make_backbone, lambda dim: BYOLProjectionHead(dim, cfg.hidden_dim, cfg.out_dim),
                         lambda: BYOLPredictionHead(cfg.out_dim, cfg.hidden_dim, cfg.out_dim),
                         NegativeCosineSimilarity())


@BUILDERS.register("byol")
def build(method: BYOLConfig, cfg: PretrainConfig, backbone: Backbone):
    return BYOL(method, backbone.create), two_views(cfg, backbone)
