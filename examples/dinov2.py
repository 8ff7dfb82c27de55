# DINOv2-style pretraining (DINO + iBOT masked patches + KoLeo; Oquab et al. 2023) on medalign's
# data and backbones, with a plain loop around medalign's objective. ViTs only.
#
#   medalign demo-data demo && python examples/dinov2.py demo/manifest.csv
#
# The objective (medalign/ssl/dinov2.py) wires lightly's MaskedVisionTransformerTIMM,
# DINOv2ProjectionHead, DINOLoss, IBOTPatchLoss, KoLeoLoss, random_block_mask and update_momentum;
# this script shows the three calls engine.fit makes around it: forward(batch) -> {"loss", ...},
# after_backward(epoch) (the heads' last layer waits one epoch), after_optimizer_step(step, total)
# (the EMA teacher). `medalign pretrain -c configs/pretrain/dinov2_vit_tiny.yaml` adds resume,
# DDP, logging and the checkpoint.
import sys

import torch

from medalign import config, ssl
from medalign.data.datasets import ImageDataset, load_rows

manifest = sys.argv[1] if len(sys.argv) > 1 else "demo/manifest.csv"
cfg = config.load(config.PretrainConfig, "configs/pretrain/dinov2_vit_tiny.yaml", [f"data.manifest={manifest}"])

from medalign.models import backbones  # noqa: E402  (imports torch and timm)

bb = backbones.resolve(cfg.backbone)  # backbone.checkpoint=... continues from weights, as loaded
objective, views = ssl.build(cfg.method, cfg, bb)  # 2 global + 2 local views

device = "cuda" if torch.cuda.is_available() else "cpu"
objective.to(device)

table, rows, _ = load_rows(manifest, ["unlabeled", "train"])
dataset = ImageDataset(table, rows, views.reseed(0), bb.in_chans)
dataloader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True, drop_last=True, num_workers=0)

optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=5e-4, weight_decay=0.04)

epochs = 3
total = epochs * len(dataloader)
print("Starting Training")
for epoch in range(epochs):
    sums = {}
    for i, (batch_views, labels) in enumerate(dataloader):
        out = objective(([v.to(device) for v in batch_views], labels))
        out["loss"].backward()
        objective.after_backward(epoch)
        optimizer.step()
        optimizer.zero_grad()
        objective.after_optimizer_step(epoch * len(dataloader) + i, total)
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) / len(dataloader)
    print(f"epoch: {epoch:>02}, " + ", ".join(f"{k}: {v:.5f}" for k, v in sums.items()))

teacher = objective.backbone()  # the EMA teacher in timm's layout, no heads: save it with timm or medalign
