"""Which weights train during fine-tuning: a linear probe, LoRA through peft, or all of them."""
from __future__ import annotations

import torch
from torch import nn

from medalign.config import FullAdapter, LinearAdapter, LoraAdapter
from medalign.errors import ConfigError
from medalign.models.backbones import head_names


def apply(model: nn.Module, adapter: LinearAdapter | LoraAdapter | FullAdapter) -> nn.Module:
    heads = head_names(model)
    if isinstance(adapter, FullAdapter):
        return model.requires_grad_(True)
    if isinstance(adapter, LinearAdapter):
        model.requires_grad_(False)
        for h in heads:
            model.get_submodule(h).requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model  # peft takes seconds to import; only LoRA needs it

    config = LoraConfig(r=adapter.r, lora_alpha=adapter.alpha, lora_dropout=adapter.dropout,
                        target_modules=adapter.target_modules, modules_to_save=heads)
    try:
        return get_peft_model(model, config)
    except ValueError as e:  # peft's NoMatchingPeftModuleError
        name = model.pretrained_cfg.get("architecture", type(model).__name__)
        raise ConfigError(f"adapter.target_modules {adapter.target_modules} match no module of {name} "
                          f"({str(e).splitlines()[0][:120]})") from None


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
