"""Which weights train during fine-tuning: the builders of medalign.models.tuning, and the head.

What an adapter froze stays in eval mode during training (`frozen_modules`): a frozen BatchNorm
must not update its running statistics, a frozen block's dropout must not fire.
"""
from __future__ import annotations

import torch
from torch import nn

from medalign import config
from medalign.models import tuning
from medalign.models.backbones import head_names


def apply(model: nn.Module, cfg: config.Section, seed: int = 0) -> nn.Module:
    """`model` with the adapter's weights and the head trainable, the rest frozen."""
    heads = head_names(model)
    if cfg.name in ("lora", "dora"):  # peft must be told the head, to save it beside the adapter
        return tuning.peft_model(model, cfg.target_modules or tuning.lora_targets(model), cfg,
                                 modules_to_save=heads, section="adapter")
    model = tuning.apply(model, cfg, seed)
    for h in heads:
        model.get_submodule(h).requires_grad_(True)
    return model


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """The largest submodules that hold parameters and train none of them."""
    params = list(model.parameters())
    if params and not any(p.requires_grad for p in params):
        return [model]
    return [m for child in model.children() for m in frozen_modules(child)]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of everything training changes: trainable weights and every buffer (BatchNorm's
    running statistics move in train mode), cheap to keep for the best epoch."""
    trained = {k for k, v in model.named_parameters() if v.requires_grad}
    trained |= {k for k, _ in model.named_buffers()}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in trained}
