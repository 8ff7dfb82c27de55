"""SimCLR: contrastive learning of visual representations (Chen et al. 2020, github.com/google-research/simclr).

lightly's NTXentLoss with negatives gathered across ranks: without `gather_distributed` each GPU
would only see its own batch's negatives, a silent loss of contrast on multi-GPU runs.
"""
from __future__ import annotations

from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.utils.debug import std_of_l2_normalized
from torch import nn

from medalign.config import PretrainConfig, SimCLRConfig
from medalign.data.transforms import MultiView, train_view
from medalign.models.backbones import Backbone
from medalign.ssl import BUILDERS


class SimCLR(nn.Module):
    def __init__(self, cfg: SimCLRConfig, make_backbone):
        super().__init__()
        self.encoder = make_backbone()
        self.head = SimCLRProjectionHead(self.encoder.num_features, cfg.hidden_dim, cfg.out_dim)
        self.criterion = NTXentLoss(temperature=cfg.temperature, gather_distributed=True)

    def forward(self, batch):
        (x0, x1), _ = batch
        f0, f1 = self.encoder(x0), self.encoder(x1)
        loss = self.criterion(self.head(f0), self.head(f1))
        return {"loss": loss, "embedding_std": std_of_l2_normalized(f0.detach())}

    def backbone(self) -> nn.Module:
        return self.encoder


@BUILDERS.register("simclr")
def build(method: SimCLRConfig, cfg: PretrainConfig, backbone: Backbone):
    view = train_view(backbone.img_size, cfg.augment, backbone.mean, backbone.std, zscore=cfg.data.intensity.zscore)
    return SimCLR(method, backbone.create), MultiView([view, view])
