"""MAE: masked autoencoders are scalable vision learners (He et al. 2022, github.com/facebookresearch/mae).

Wiring of lightly's MaskedVisionTransformerTIMM, MaskedVisionTransformerDecoderTIMM and token
utilities (random_token_mask, get_at_index, set_at_index, patchify). ViTs only. For continued
pretraining the encoder must keep the weights `backbone.create` loaded: MaskedVisionTransformerTIMM
re-initialises every weight and overwrites the position embeddings with sin-cos ones unless told
to skip both.
"""
from __future__ import annotations

import torch.nn.functional as F
from lightly.models import utils
from lightly.models.modules import MaskedVisionTransformerDecoderTIMM, MaskedVisionTransformerTIMM
from lightly.models.modules.masked_vision_transformer_timm import init_weights
from lightly.utils.debug import std_of_l2_normalized
from torch import nn

from medalign.config import PretrainConfig
from medalign.config.ssl import MAEConfig
from medalign.data.transforms import MultiView, train_view
from medalign.errors import ConfigError
from medalign.models.backbones import Backbone
from medalign.ssl import BUILDERS


def masked_vit(method: str, backbone: Backbone, vit: nn.Module) -> MaskedVisionTransformerTIMM:
    """`vit` as lightly's masked encoder, its weights and position embeddings as loaded (a ViT
    with patch_embed, blocks and pos_embed, else a one-line ConfigError)."""
    missing = [a for a in ("patch_embed", "blocks", "pos_embed") if getattr(vit, a, None) is None]
    if missing or getattr(vit, "num_prefix_tokens", 2) > 1:
        why = f"has no {', '.join(missing)}" if missing else "has register tokens"
        raise ConfigError(f"method {method} needs a plain ViT (patch_embed, blocks, pos_embed, at most a class "
                          f"token); backbone {backbone.name} {why}")
    encoder = MaskedVisionTransformerTIMM(vit, weight_initialization="skip", pos_embed_initialization="skip")
    return encoder


class MAE(nn.Module):
    def __init__(self, cfg: MAEConfig, encoder: MaskedVisionTransformerTIMM, in_chans: int):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        # images are encoded with idx_keep, never with a mask token: keep it out of the optimizer
        # (and out of DDP, which refuses parameters that get no gradient)
        self.encoder.mask_token.requires_grad_(False)
        vit = encoder.vit
        self.prefix = vit.num_prefix_tokens
        self.patch_size = vit.patch_embed.patch_size[0]
        self.decoder_embed = nn.Linear(vit.embed_dim, cfg.decoder_dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=vit.patch_embed.num_patches, embed_dim=cfg.decoder_dim, depth=cfg.decoder_depth,
            num_heads=cfg.decoder_heads, num_prefix_tokens=self.prefix)
        self.prediction_head = nn.Linear(cfg.decoder_dim, self.patch_size ** 2 * in_chans)
        # the new parts only: the encoder keeps its loaded weights
        self.decoder_embed.apply(init_weights)
        self.prediction_head.apply(init_weights)

    def forward(self, batch):
        (images,), _ = batch
        n, length = images.shape[0], self.encoder.sequence_length
        idx_keep, idx_mask = utils.random_token_mask((n, length), self.cfg.mask_ratio,
                                                     mask_class_token=self.prefix == 0, device=images.device)
        encoded = self.encoder.encode(images, idx_keep=idx_keep)
        tokens = self.decoder_embed(encoded)
        full = utils.set_at_index(tokens.new_zeros(n, length, tokens.shape[-1]), idx_keep, tokens)
        decoded = self.decoder(full, idx_mask=idx_mask)  # masked positions get the decoder's mask token
        pred = self.prediction_head(utils.get_at_index(decoded, idx_mask))
        target = utils.get_at_index(utils.patchify(images, self.patch_size), idx_mask - self.prefix)
        if self.cfg.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        features = encoded[:, 0] if self.prefix else encoded.mean(1)
        return {"loss": F.mse_loss(pred, target), "embedding_std": std_of_l2_normalized(features.detach())}

    def backbone(self) -> nn.Module:
        return self.encoder.vit


@BUILDERS.register("mae")
def build(method: MAEConfig, cfg: PretrainConfig, backbone: Backbone):
    encoder = masked_vit("mae", backbone, backbone.create())
    view = train_view(backbone.img_size, cfg.augment, backbone.mean, backbone.std, zscore=cfg.data.intensity.zscore)
    return MAE(method, encoder, backbone.in_chans), MultiView([view])
