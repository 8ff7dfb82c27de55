"""DINOv2-style: DINO's image-level loss + iBOT's masked-patch loss + the KoLeo regulariser
(Oquab et al. 2023, github.com/facebookresearch/dinov2). ViTs only.

Wiring of lightly's MaskedVisionTransformerTIMM (weights and position embeddings kept as loaded),
DINOv2ProjectionHead (one head shared by the [CLS] and patch losses, the paper's default),
DINOLoss, IBOTPatchLoss, KoLeoLoss, random_block_mask and update_momentum. Both losses centre the
teacher by a running mean as DINO does (not the paper's Sinkhorn-Knopp). Left out: the schedules
of teacher temperature and weight decay, layer-wise LR decay (optim.layer_decay does that).
"""
from __future__ import annotations

import torch
from lightly.loss import DINOLoss, IBOTPatchLoss, KoLeoLoss
from lightly.models.modules import DINOv2ProjectionHead
from lightly.models.utils import random_block_mask, update_momentum
from lightly.utils.debug import std_of_l2_normalized
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from medalign.config import PretrainConfig
from medalign.config.ssl import DINOv2Config
from medalign.errors import ConfigError
from medalign.models.backbones import Backbone
from medalign.ssl import BUILDERS
from medalign.ssl.dino import multi_crop
from medalign.ssl.mae import masked_vit
from medalign.ssl.momentum import momentum_copy


class DINOv2(nn.Module):
    def __init__(self, cfg: DINOv2Config, make_encoder):
        super().__init__()
        self.cfg = cfg
        self.student = make_encoder()
        self.teacher = momentum_copy(make_encoder, self.student)
        dim = self.student.vit.embed_dim

        def head():
            return DINOv2ProjectionHead(dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.out_dim)
        self.student_head = head()
        self.teacher_head = momentum_copy(head, self.student_head)
        self.dino = DINOLoss(output_dim=cfg.out_dim, teacher_temp=cfg.teacher_temp,
                             warmup_teacher_temp=cfg.teacher_temp, student_temp=cfg.student_temp)
        self.ibot = IBOTPatchLoss(output_dim=cfg.out_dim, teacher_temp=cfg.teacher_temp, student_temp=cfg.student_temp)
        self.koleo = KoLeoLoss()

    def forward(self, batch):
        views, _ = batch
        globals_ = torch.cat(views[:2])
        n = globals_.shape[0]
        h, w = self.student.vit.patch_embed.grid_size
        # blocks of at least 4 patches (the paper's) need grids of 40+ patches; tiny test grids take 1
        block_mask = random_block_mask(size=(n, h, w), min_num_masks_per_block=min(4, max(1, h * w // 10)),
                                       device=globals_.device)
        mask = block_mask.new_zeros((n, self.student.sequence_length))
        mask[:, 1:] = block_mask.flatten(1)  # the class token is never masked

        with torch.no_grad():
            t_tokens = self.teacher.encode(globals_)
            t_cls, t_patch = self.teacher_head(t_tokens[:, 0]), self.teacher_head(t_tokens[mask])
        s_tokens = self.student.encode(globals_, mask=mask)
        s_cls = [self.student_head(s_tokens[:, 0])]
        if len(views) > 2:
            s_cls.append(self.student_head(self.student.encode(torch.cat(views[2:]))[:, 0]))
        s_cls = torch.cat(s_cls)
        image_loss = self.dino(t_cls.chunk(2), s_cls.chunk(len(views)))
        patch_loss = self.ibot(t_patch, self.student_head(s_tokens[mask]), mask=block_mask)
        spread = sum(self.koleo(c) for c in s_tokens[:, 0].chunk(2))
        loss = image_loss + self.cfg.ibot_weight * patch_loss + self.cfg.koleo_weight * spread
        return {"loss": loss, "embedding_std": std_of_l2_normalized(s_tokens[: n // 2, 0].detach()),
                "dino_loss": image_loss.detach(), "ibot_loss": patch_loss.detach()}

    def after_backward(self, epoch: int) -> None:
        if epoch < self.cfg.freeze_last_layer_epochs:  # as DINO: the prototypes wait for the features
            for p in self.student_head.last_layer.parameters():
                p.grad = None

    def after_optimizer_step(self, step: int, total: int) -> None:
        m = cosine_schedule(step, total, self.cfg.teacher_momentum, 1.0)
        update_momentum(self.student, self.teacher, m)
        update_momentum(self.student_head, self.teacher_head, m)

    def backbone(self) -> nn.Module:
        return self.teacher.vit  # the EMA teacher, as DINO and DINOv2 keep


@BUILDERS.register("dinov2")
def build(method: DINOv2Config, cfg: PretrainConfig, backbone: Backbone):
    views, sizes = multi_crop(method, cfg, backbone)

    def make():
        # local crops are smaller: timm's dynamic_img_size interpolates the position embeddings
        try:
            vit = backbone.create(dynamic_img_size=True) if method.n_local_crops else backbone.create()
        except ConfigError:
            vit = backbone.create()
        return masked_vit("dinov2", backbone, vit)

    objective = DINOv2(method, make)
    if method.n_local_crops and not getattr(objective.student.vit, "dynamic_img_size", False):
        raise ConfigError(f"backbone {backbone.name} does not take {sizes[-1]} px local crops; set method.n_local_crops=0")
    return objective, views
