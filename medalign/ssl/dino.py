"""DINO: self-distillation with no labels (Caron et al. 2021, github.com/facebookresearch/dino).

Wiring of lightly's DINOLoss, DINOProjectionHead, update_momentum and cosine_schedule, with
medical defaults: grayscale intensity views instead of colour jitter, far fewer prototypes than the
paper's 65536 (small datasets collapse onto a few of them anyway).
"""
from __future__ import annotations

import dataclasses

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import update_momentum
from lightly.utils.debug import std_of_l2_normalized
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from medalign.config import DinoConfig, PretrainConfig
from medalign.data.transforms import MultiView, train_view
from medalign.errors import ConfigError
from medalign.models.backbones import Backbone
from medalign.ssl import BUILDERS
from medalign.ssl.momentum import momentum_copy


class DINO(nn.Module):
    def __init__(self, cfg: DinoConfig, make_backbone):
        super().__init__()
        self.cfg = cfg
        self.student = make_backbone()
        self.teacher = momentum_copy(make_backbone, self.student)
        dim = self.student.num_features
        self.student_head = DINOProjectionHead(dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.out_dim,
                                               freeze_last_layer=cfg.freeze_last_layer_epochs)
        self.teacher_head = momentum_copy(
            lambda: DINOProjectionHead(dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.out_dim), self.student_head)
        self.criterion = DINOLoss(output_dim=cfg.out_dim, teacher_temp=cfg.teacher_temp,
                                  warmup_teacher_temp=cfg.teacher_temp, student_temp=cfg.student_temp)

    def forward(self, batch):
        views, _ = batch
        global_views = views[:2]
        with torch.no_grad():
            teacher_out = [self.teacher_head(self.teacher(v)) for v in global_views]
        features = [self.student(v) for v in views]
        student_out = [self.student_head(f) for f in features]
        loss = self.criterion(teacher_out, student_out)
        # std of l2-normalised features: about 1/sqrt(dim) when healthy, near 0 when collapsed
        return {"loss": loss, "embedding_std": std_of_l2_normalized(features[0].detach())}

    def after_backward(self, epoch: int) -> None:
        self.student_head.cancel_last_layer_gradients(epoch)

    def after_optimizer_step(self, step: int, total: int) -> None:
        m = cosine_schedule(step, total, self.cfg.teacher_momentum, 1.0)
        update_momentum(self.student, self.teacher, m)
        update_momentum(self.student_head, self.teacher_head, m)

    def backbone(self) -> nn.Module:
        return self.teacher  # the EMA teacher is the better network, as the paper reports


@BUILDERS.register("dino")
def build(method: DinoConfig, cfg: PretrainConfig, backbone: Backbone):
    views, sizes = multi_crop(method, cfg, backbone)
    return DINO(method, _sized_for(backbone, sizes)), views


def multi_crop(method, cfg: PretrainConfig, backbone: Backbone) -> tuple[MultiView, list[int]]:
    """DINO's views: two global crops at the backbone's size, then `n_local_crops` at half of it;
    and the sizes the backbone must take. DINOv2 uses the same."""
    size, local = backbone.img_size, max(backbone.img_size // 2, 16)
    z = cfg.data.intensity.zscore
    views = [train_view(size, cfg.augment, backbone.mean, backbone.std, zscore=z)] * 2
    views += [train_view(local, cfg.augment, backbone.mean, backbone.std, scale=method.local_crop_scale,
                         zscore=z)] * method.n_local_crops
    return MultiView(views), [size, local] if method.n_local_crops else [size]


def _sized_for(backbone: Backbone, sizes: list[int]):
    """A factory of backbones that take every crop size: ask the model, not its name. ViT-likes
    take timm's dynamic_img_size (position embeddings interpolated per input), CNNs any size."""
    def make(bb: Backbone = backbone):
        try:
            return bb.create(dynamic_img_size=True)
        except ConfigError:  # timm models without the option refuse it
            return bb.create()

    probe = make(dataclasses.replace(backbone, weights=None, pretrained=False)).eval()  # shape check only
    for s in sizes:
        try:
            with torch.no_grad():
                probe(torch.zeros(1, backbone.in_chans, s, s))
        except (RuntimeError, AssertionError, ValueError) as e:
            raise ConfigError(f"backbone {backbone.name} does not take {s} px inputs ({str(e).splitlines()[0][:120]}); "
                              "set method.n_local_crops=0 or use a backbone that takes any size") from None
    return make
