# MAE (He et al. 2022) on medalign's data and backbones, in lightly's example shape. ViTs only.
#
#   medalign demo-data demo && python examples/mae.py demo/manifest.csv
#
# medalign supplies the pieces medical images need (manifest reading, 1-channel views, a timm ViT
# built with in_chans=1 and any starting weights); the model and loop are lightly's.
# `medalign pretrain -c configs/pretrain/mae_vit_tiny.yaml` runs the same method with resume,
# DDP, logging and a checkpoint; this script is for reading.
import sys

import torch
from lightly.models import utils
from lightly.models.modules import MaskedVisionTransformerDecoderTIMM, MaskedVisionTransformerTIMM
from lightly.models.modules.masked_vision_transformer_timm import init_weights
from torch import nn

from medalign.config import AugmentConfig, BackboneConfig
from medalign.data.datasets import ImageDataset, load_rows
from medalign.data.transforms import MultiView, train_view
from medalign.models import backbones


class MAE(nn.Module):
    def __init__(self, vit, in_chans, decoder_dim=128, mask_ratio=0.75):
        super().__init__()
        self.mask_ratio = mask_ratio
        self.patch_size = vit.patch_embed.patch_size[0]
        # continued pretraining: keep the weights and position embeddings the ViT was loaded with
        # (lightly's defaults re-initialise both, as for training from scratch)
        self.backbone = MaskedVisionTransformerTIMM(vit, weight_initialization="skip", pos_embed_initialization="skip")
        self.backbone.mask_token.requires_grad_(False)  # the encoder drops masked tokens, never fills them
        self.sequence_length = self.backbone.sequence_length
        self.decoder_embed = nn.Linear(vit.embed_dim, decoder_dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(num_patches=vit.patch_embed.num_patches,
                                                          embed_dim=decoder_dim, depth=2, num_heads=4)
        self.prediction_head = nn.Linear(decoder_dim, self.patch_size ** 2 * in_chans)
        self.decoder_embed.apply(init_weights)
        self.prediction_head.apply(init_weights)

    def forward(self, images):
        n = images.shape[0]
        idx_keep, idx_mask = utils.random_token_mask((n, self.sequence_length), self.mask_ratio, device=images.device)
        encoded = self.decoder_embed(self.backbone.encode(images, idx_keep=idx_keep))
        full = utils.set_at_index(encoded.new_zeros(n, self.sequence_length, encoded.shape[-1]), idx_keep, encoded)
        pred = self.prediction_head(utils.get_at_index(self.decoder(full, idx_mask=idx_mask), idx_mask))
        target = utils.get_at_index(utils.patchify(images, self.patch_size), idx_mask - 1)  # -1: class token
        # per-patch normalised pixels, the paper's better target
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        return pred, target


manifest = sys.argv[1] if len(sys.argv) > 1 else "demo/manifest.csv"
bb = backbones.resolve(BackboneConfig(name="vit_tiny_patch16_224", kwargs={"patch_size": 8, "depth": 6},
                                      in_chans=1, img_size=64))  # checkpoint=... to continue from weights
model = MAE(bb.create(), bb.in_chans)

device = "cuda" if torch.cuda.is_available() else "cpu"
model.to(device)

view = train_view(bb.img_size, AugmentConfig(), bb.mean, bb.std)
table, rows, _ = load_rows(manifest, ["unlabeled", "train"])
dataset = ImageDataset(table, rows, MultiView([view]).reseed(0), bb.in_chans)
dataloader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True, drop_last=True, num_workers=0)

criterion = nn.MSELoss()
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1.5e-3, weight_decay=0.05)

print("Starting Training")
for epoch in range(8):
    total_loss = 0
    for (images,), _ in dataloader:
        predictions, targets = model(images.to(device))
        loss = criterion(predictions, targets)
        total_loss += loss.detach()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    print(f"epoch: {epoch:>02}, loss: {total_loss / len(dataloader):.5f}")
