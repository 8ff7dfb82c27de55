"""Which weights train during fine-tuning: a linear probe, or LoRA through peft."""
from __future__ import annotations

import torch
from torch import nn

from medalign.config import LinearAdapter, LoraAdapter


def head_name(model: nn.Module) -> str:
    return model.pretrained_cfg.get("classifier", "head")


def apply(model: nn.Module, adapter: LinearAdapter | LoraAdapter) -> nn.Module:
    if isinstance(adapter, LinearAdapter):
        model.requires_grad_(False)
        model.get_classifier().requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model  # peft takes seconds to import; only LoRA needs it

    config = LoraConfig(r=adapter.r, lora_alpha=adapter.alpha, lora_dropout=adapter.dropout,
                        target_modules=adapter.target_modules, modules_to_save=[head_name(model)])
    return get_peft_model(model, config)


def merged(model: nn.Module) -> nn.Module:
    """A plain timm model again: LoRA deltas folded into the weights they adapt."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the trained weights only: cheap to keep for the best epoch."""
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
