# BYOL (Grill et al. 2020) on medalign's data and backbones, in lightly's example shape.
#
#   medalign demo-data demo && python examples/byol.py demo/manifest.csv
#
# medalign supplies the pieces medical images need (manifest reading, 1-channel views, a timm
# backbone built with in_chans=1 and any starting weights); the model and loop are lightly's.
# `medalign pretrain -c configs/pretrain/byol_resnet18.yaml` runs the same method with resume,
# DDP, logging and a checkpoint; this script is for reading.
import sys

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from medalign.config import AugmentConfig, BackboneConfig
from medalign.data.datasets import ImageDataset, load_rows
from medalign.data.transforms import MultiView, train_view
from medalign.models import backbones


class BYOL(nn.Module):
    def __init__(self, make_backbone, hidden_dim=1024, out_dim=256):
        super().__init__()
        self.backbone = make_backbone()
        dim = self.backbone.num_features
        self.projection_head = BYOLProjectionHead(dim, hidden_dim, out_dim)
        self.prediction_head = BYOLPredictionHead(out_dim, hidden_dim, out_dim)
        # a second network loaded with the first's state, rather than deepcopy
        self.backbone_momentum = make_backbone()
        self.backbone_momentum.load_state_dict(self.backbone.state_dict())
        self.projection_head_momentum = BYOLProjectionHead(dim, hidden_dim, out_dim)
        self.projection_head_momentum.load_state_dict(self.projection_head.state_dict())
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x):
        return self.prediction_head(self.projection_head(self.backbone(x)))

    @torch.no_grad()
    def forward_momentum(self, x):
        return self.projection_head_momentum(self.backbone_momentum(x))

    @torch.no_grad()
    def update(self, m):
        for online, target in [(self.backbone, self.backbone_momentum),
                               (self.projection_head, self.projection_head_momentum)]:
            update_momentum(online, target, m)
            for b_target, b_online in zip(target.buffers(), online.buffers()):
                b_target.copy_(b_online)  # update_momentum skips BatchNorm's running statistics


manifest = sys.argv[1] if len(sys.argv) > 1 else "demo/manifest.csv"
bb = backbones.resolve(BackboneConfig(name="resnet18", in_chans=1, img_size=64))  # checkpoint=... for weights
model = BYOL(bb.create)

device = "cuda" if torch.cuda.is_available() else "cpu"
model.to(device)

view = train_view(bb.img_size, AugmentConfig(), bb.mean, bb.std)
table, rows, _ = load_rows(manifest, ["unlabeled", "train"])
dataset = ImageDataset(table, rows, MultiView([view, view]).reseed(0), bb.in_chans)
dataloader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True, drop_last=True, num_workers=0)

criterion = NegativeCosineSimilarity()
optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)

epochs = 4
total = epochs * len(dataloader)
print("Starting Training")
for epoch in range(epochs):
    total_loss = 0
    for i, ((x0, x1), _) in enumerate(dataloader):
        x0, x1 = x0.to(device), x1.to(device)
        loss = 0.5 * (criterion(model(x0), model.forward_momentum(x1)) +
                      criterion(model(x1), model.forward_momentum(x0)))
        total_loss += loss.detach()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.update(cosine_schedule(epoch * len(dataloader) + i, total, 0.99, 1.0))
    print(f"epoch: {epoch:>02}, loss: {total_loss / len(dataloader):.5f}")
