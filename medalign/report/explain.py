"""Where the model looked: Grad-CAM (MONAI) for networks with spatial features, attention rollout
(Abnar & Zuidema 2020) for ViTs, whose token features Grad-CAM cannot map back onto the image.
Rollout is written here: neither MONAI nor timm has it. Both give one [0, 1] map per image at the
input's size."""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def explain(model: nn.Module, x: torch.Tensor, class_idx: list[int]) -> tuple[np.ndarray, str]:
    """Maps (B, H, W) for the given classes, and the method's name."""
    net = _timm_model(model)
    if _vit_blocks(net) is not None:
        return rollout(net, x), "attention rollout"
    return grad_cam(model, net, x, class_idx), "Grad-CAM"


def grad_cam(model: nn.Module, net: nn.Module, x: torch.Tensor, class_idx: list[int]) -> np.ndarray:
    from monai.visualize import GradCAM

    layer = net.feature_info[-1]["module"]
    # peft wraps the timm model: its layer is found by the name's ending
    target = next(n for n, _ in model.named_modules() if n == layer or n.endswith("." + layer))
    cam = GradCAM(nn_module=model, target_layers=target)
    out = []
    with torch.enable_grad():
        for i, c in enumerate(class_idx):
            # a frozen backbone (linear probe) has no parameter that needs a gradient: the input does
            xi = x[i:i + 1].clone().requires_grad_(True)
            out.append(cam(x=xi, class_idx=c)[0, 0].detach().cpu().numpy())
    return np.stack(out)


@torch.no_grad()
def rollout(net: nn.Module, x: torch.Tensor) -> np.ndarray:
    blocks = _vit_blocks(net)
    captured: list[torch.Tensor] = []
    with contextlib.ExitStack() as stack:
        for block in blocks:
            attn = block.attn
            # the fused kernel never materialises the attention matrix: run the explicit path
            stack.callback(setattr, attn, "fused_attn", attn.fused_attn)
            attn.fused_attn = False
            handle = attn.attn_drop.register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
            stack.callback(handle.remove)
        net(x)
    n_tokens = captured[0].shape[-1]
    result = torch.eye(n_tokens).expand(len(x), n_tokens, n_tokens)
    for a in captured:
        a = a.mean(1)  # over heads
        a = 0.5 * a + 0.5 * torch.eye(n_tokens)  # the residual path
        a = a / a.sum(-1, keepdim=True)
        result = a @ result
    prefix = net.num_prefix_tokens
    grid = net.patch_embed.grid_size
    maps = result[:, 0, prefix:].reshape(len(x), 1, *grid)  # what the class token gathered, per patch
    maps = F.interpolate(maps, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    lo, hi = maps.amin((1, 2), keepdim=True), maps.amax((1, 2), keepdim=True)
    return ((maps - lo) / (hi - lo).clamp_min(1e-12)).numpy()


def _timm_model(model: nn.Module) -> nn.Module:
    return next(m for m in model.modules() if hasattr(m, "forward_head"))


def _vit_blocks(net: nn.Module):
    blocks = getattr(net, "blocks", None)
    if blocks is not None and hasattr(net, "num_prefix_tokens") and hasattr(net, "patch_embed") and all(
            hasattr(getattr(b, "attn", None), "attn_drop") for b in blocks):
        return blocks
    return None
