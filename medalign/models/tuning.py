"""Which backbone weights train during continued pretraining, one builder per `tuning` config name.

A builder takes a freshly built timm backbone (weights loaded) and returns the network to train.
SSL methods build their student and EMA teacher through the same factory, so both get the same
structure (and APLA the same rows); `merged` turns either back into a plain timm model for saving.

    full      every weight
    frozen    the stem and the first N blocks (ViT) or stages (CNN) frozen, as timm groups them
    apla      only each attention block's output projection (Sorkhei et al. 2025, arXiv 2503.11335):
              all of it, or r output rows split off into their own parameter, so the optimizer
              holds state for r rows only (masking a full gradient would save nothing)
    explora   the last K blocks and every norm train, LoRA on the rest (Khanna et al., ICML 2025)
    lora      LoRA alone, through peft (also on convolutions)
    bitfit    biases and norm layers only
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from timm.models import group_parameters
from torch import nn

from medalign import config
from medalign.errors import ConfigError
from medalign.registry import Registry

BUILDERS: Registry[Callable[[nn.Module, config.Section, int], nn.Module]] = Registry("tuning")
NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def apply(model: nn.Module, cfg: config.Section, seed: int) -> nn.Module:
    return BUILDERS.get(cfg.name)(model, cfg, seed)


@BUILDERS.register("full")
def full(model: nn.Module, cfg: config.FullAdapter, seed: int) -> nn.Module:
    return model.requires_grad_(True)


@BUILDERS.register("frozen")
def frozen(model: nn.Module, cfg: config.FrozenTuning, seed: int) -> nn.Module:
    groups = group_parameters(model, model.group_matcher(coarse=True))  # 0: stem, 1..: blocks or stages
    blocks = sorted(g for g in groups if g > 0)
    if cfg.blocks > len(blocks):
        raise ConfigError(f"tuning.blocks={cfg.blocks}: {_name(model)} has {len(blocks)} blocks or stages")
    frozen_names = {n for g in [0, *blocks[:cfg.blocks]] for n in groups.get(g, [])}
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen_names)
    return model


@BUILDERS.register("bitfit")
def bitfit(model: nn.Module, cfg: config.BitFitTuning, seed: int) -> nn.Module:
    model.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, NORMS):
            m.requires_grad_(True)
        elif getattr(m, "bias", None) is not None and isinstance(m.bias, nn.Parameter):
            m.bias.requires_grad_(True)
    return model


class RowAdapted(nn.Module):
    """A linear layer whose rows `index` train and the rest stay: the trained rows are their own
    (r, in) parameter, so gradients and AdamW state cost r rows, not the whole matrix."""

    def __init__(self, base: nn.Linear, index: torch.Tensor):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.register_buffer("index", index)
        self.rows = nn.Parameter(base.weight.detach()[index].clone())
        self.bias_rows = nn.Parameter(base.bias.detach()[index].clone()) if base.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.base.weight.index_copy(0, self.index, self.rows)
        bias = None if self.base.bias is None else self.base.bias.index_copy(0, self.index, self.bias_rows)
        return F.linear(x, weight, bias)

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight[self.index] = self.rows
            if self.bias_rows is not None:
                self.base.bias[self.index] = self.bias_rows
        return self.base


@BUILDERS.register("apla")
def apla(model: nn.Module, cfg: config.AplaTuning, seed: int) -> nn.Module:
    projections = [(n, m) for n, m in model.named_modules() if n.endswith("attn.proj") and isinstance(m, nn.Linear)]
    if not projections:
        raise ConfigError(f"tuning.name=apla: {_name(model)} has no attention output projections (attn.proj)")
    model.requires_grad_(False)
    for i, (name, proj) in enumerate(projections):
        if cfg.r is None:
            proj.requires_grad_(True)
            continue
        if cfg.r > proj.out_features:
            raise ConfigError(f"tuning.r={cfg.r}: {name} has {proj.out_features} output rows")
        # drawn from (seed, block): student and EMA teacher, built apart, pick the same rows
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        index = torch.randperm(proj.out_features, generator=g)[:cfg.r].sort().values
        parent, leaf = name.rsplit(".", 1)
        setattr(model.get_submodule(parent), leaf, RowAdapted(proj, index.to(proj.weight.device)))
    return model


@BUILDERS.register("lora")
def lora(model: nn.Module, cfg: config.LoraAdapter, seed: int) -> nn.Module:
    return _peft(model, cfg.target_modules, cfg)


@BUILDERS.register("explora")
def explora(model: nn.Module, cfg: config.ExploraTuning, seed: int) -> nn.Module:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential | nn.ModuleList) or cfg.unfrozen_blocks > len(blocks):
        raise ConfigError(f"tuning.name=explora: {_name(model)} has no `blocks` list of at least "
                          f"{cfg.unfrozen_blocks} transformer blocks")
    lora_blocks = range(len(blocks) - cfg.unfrozen_blocks)
    targets = rf"blocks\.({'|'.join(map(str, lora_blocks))})\..*({'|'.join(cfg.target_modules)})$"
    tuned = _peft(model, targets, cfg) if lora_blocks else model.requires_grad_(False)
    for block in list(blocks)[len(lora_blocks):]:
        block.requires_grad_(True)
    for m in model.modules():
        if isinstance(m, NORMS):
            m.requires_grad_(True)
    return tuned


def _peft(model: nn.Module, targets, cfg) -> nn.Module:
    from peft import LoraConfig, get_peft_model  # seconds to import: only LoRA-based tuning needs it

    try:
        return get_peft_model(model, LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                                target_modules=targets))
    except ValueError as e:  # peft's NoMatchingPeftModuleError
        raise ConfigError(f"tuning.target_modules {cfg.target_modules} match no module of {_name(model)} "
                          f"({str(e).splitlines()[0][:120]})") from None


def merged(model: nn.Module) -> nn.Module:
    """A plain timm model again: LoRA folded in, APLA rows written back. Changes `model` in place."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    for name, m in list(model.named_modules()):
        if isinstance(m, RowAdapted):
            parent, leaf = name.rsplit(".", 1)
            setattr(model.get_submodule(parent), leaf, m.merged())
    return model


def _name(model: nn.Module) -> str:
    return getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
