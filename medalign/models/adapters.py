"""Which weights train during fine-tuning, one builder per adapter filed in BUILDERS by its config name.

A builder takes the timm model and its adapter config, sets `requires_grad`, and returns the model
to train (peft wraps it for LoRA). What it froze stays in eval mode during training
(`frozen_modules`): a frozen BatchNorm must not update its running statistics, a frozen block's
dropout must not fire.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from medalign import config
from medalign.errors import ConfigError
from medalign.models.backbones import head_names
from medalign.registry import Registry

BUILDERS: Registry[Callable[[nn.Module, config.Section], nn.Module]] = Registry("adapter")


@BUILDERS.register("full")
def full(model: nn.Module, cfg: config.FullAdapter) -> nn.Module:
    return model.requires_grad_(True)


@BUILDERS.register("linear")
def linear(model: nn.Module, cfg: config.LinearAdapter) -> nn.Module:
    model.requires_grad_(False)
    for h in head_names(model):
        model.get_submodule(h).requires_grad_(True)
    return model


@BUILDERS.register("lora")
def lora(model: nn.Module, cfg: config.LoraAdapter) -> nn.Module:
    from peft import LoraConfig, get_peft_model  # peft takes seconds to import; only LoRA needs it

    peft_cfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=cfg.target_modules, modules_to_save=head_names(model))
    try:
        return get_peft_model(model, peft_cfg)
    except ValueError as e:  # peft's NoMatchingPeftModuleError
        name = model.pretrained_cfg.get("architecture", type(model).__name__)
        raise ConfigError(f"adapter.target_modules {cfg.target_modules} match no module of {name} "
                          f"({str(e).splitlines()[0][:120]})") from None


def apply(model: nn.Module, cfg: config.Section) -> nn.Module:
    return BUILDERS.get(cfg.name)(model, cfg)


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """The largest submodules that hold parameters and train none of them."""
    params = list(model.parameters())
    if params and not any(p.requires_grad for p in params):
        return [model]
    return [m for child in model.children() for m in frozen_modules(child)]


def merged(model: nn.Module) -> nn.Module:
    """A plain timm model again: LoRA deltas folded into the weights they adapt."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of everything training changes: trainable weights and every buffer (BatchNorm's
    running statistics move in train mode), cheap to keep for the best epoch."""
    trained = {k for k, v in model.named_parameters() if v.requires_grad}
    trained |= {k for k, _ in model.named_buffers()}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in trained}
