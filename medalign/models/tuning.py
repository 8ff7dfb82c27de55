"""Which weights train, one builder per name: pretraining's `tuning` and fine-tuning's `adapter`.

A builder takes a freshly built timm model (weights loaded) and returns the network to train. SSL
methods build their student and EMA teacher through the same factory, so both get the same
structure (and APLA the same rows); fine-tuning then unfreezes the head (medalign.models.adapters).
`merged` turns any of them back into a plain timm model for saving.

    full      every weight
    linear    nothing (fine-tuning trains the head alone)
    frozen    the stem and the first N blocks (ViT) or stages (CNN) frozen, as timm groups them
    partial   the last K blocks or stages and what follows them train, the rest frozen
    apla      only each attention block's output projection (Sorkhei et al. 2025, arXiv 2503.11335):
              all of it, or r output rows split off into their own parameter, so the optimizer
              holds state for r rows only (masking a full gradient would save nothing)
    explora   the last K blocks and every norm train, LoRA on the rest (Khanna et al., ICML 2025)
    lora      LoRA alone, through peft (also on convolutions); dora: peft's DoRA
    bitfit    biases, and norm layers unless told not to
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
# the linears of a transformer block, as timm names them in ViTs and TinyViT
TRANSFORMER_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def apply(model: nn.Module, cfg: config.Section, seed: int) -> nn.Module:
    return BUILDERS.get(cfg.name)(model, cfg, seed)


@BUILDERS.register("full")
def full(model: nn.Module, cfg: config.FullAdapter, seed: int) -> nn.Module:
    return model.requires_grad_(True)


@BUILDERS.register("linear")
def linear(model: nn.Module, cfg: config.LinearAdapter, seed: int) -> nn.Module:
    return model.requires_grad_(False)


@BUILDERS.register("frozen")
def frozen(model: nn.Module, cfg: config.FrozenTuning, seed: int) -> nn.Module:
    stem, blocks = block_groups(model)
    if cfg.blocks > len(blocks):
        raise ConfigError(f"tuning.blocks={cfg.blocks}: {_name(model)} has {len(blocks)} blocks or stages")
    return _freeze(model, stem.union(*blocks[:cfg.blocks]))


@BUILDERS.register("partial")
def partial(model: nn.Module, cfg: config.PartialAdapter, seed: int) -> nn.Module:
    stem, blocks = block_groups(model)
    if cfg.blocks > len(blocks):
        raise ConfigError(f"adapter.blocks={cfg.blocks}: {_name(model)} has {len(blocks)} blocks or stages")
    return _freeze(model, stem.union(*blocks[:len(blocks) - cfg.blocks]))


def block_groups(model: nn.Module) -> tuple[set[str], list[set[str]]]:
    """The stem's parameter names and each block's (ViT) or stage's (CNN) in order, from timm's
    coarse group_matcher; what follows the blocks (final norm, neck, head) is in neither."""
    try:
        matcher = model.group_matcher(coarse=True)
        blocks = matcher["blocks"]
        # the first pattern is the blocks'; later ones file trailing norms with the last block
        first = blocks[0][0] if isinstance(blocks, (list, tuple)) else blocks
        groups = group_parameters(model, {"stem": matcher["stem"], "blocks": first})
    except (AttributeError, KeyError, TypeError):
        raise ConfigError(f"{_name(model)} has no timm group_matcher with a stem and blocks") from None
    ids = sorted(groups)  # 0: the stem; the last: what no pattern matched (after the blocks)
    return set(groups[ids[0]]), [set(groups[g]) for g in ids[1:-1]]


def _freeze(model: nn.Module, names: set[str]) -> nn.Module:
    for n, p in model.named_parameters():
        p.requires_grad_(n not in names)
    return model


@BUILDERS.register("bitfit")
def bitfit(model: nn.Module, cfg: config.BitFitTuning, seed: int) -> nn.Module:
    model.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, NORMS):
            m.requires_grad_(cfg.norms)
        if getattr(m, "bias", None) is not None and isinstance(m.bias, nn.Parameter):
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
@BUILDERS.register("dora")
def lora(model: nn.Module, cfg: config.LoraAdapter, seed: int) -> nn.Module:
    return peft_model(model, cfg.target_modules or lora_targets(model), cfg)


def lora_targets(model: nn.Module) -> list[str]:
    """The modules LoRA adapts when the config names none: every transformer block's attention
    and MLP linears (timm ViTs, TinyViT); in a CNN every full convolution but the stem (in an
    EfficientNet those are the pointwise ones: its depthwise convs are grouped)."""
    linears = [n for n, m in model.named_modules() if n.endswith(TRANSFORMER_LINEARS) and isinstance(m, nn.Linear)]
    if linears:
        return linears
    stem = getattr(model, "pretrained_cfg", {}).get("first_conv")
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1 and n != stem]


@BUILDERS.register("explora")
def explora(model: nn.Module, cfg: config.ExploraTuning, seed: int) -> nn.Module:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential | nn.ModuleList) or cfg.unfrozen_blocks > len(blocks):
        raise ConfigError(f"tuning.name=explora: {_name(model)} has no `blocks` list of at least "
                          f"{cfg.unfrozen_blocks} transformer blocks")
    lora_blocks = range(len(blocks) - cfg.unfrozen_blocks)
    targets = rf"blocks\.({'|'.join(map(str, lora_blocks))})\..*({'|'.join(cfg.target_modules)})$"
    tuned = peft_model(model, targets, cfg) if lora_blocks else model.requires_grad_(False)
    for block in list(blocks)[len(lora_blocks):]:
        block.requires_grad_(True)
    for m in model.modules():
        if isinstance(m, NORMS):
            m.requires_grad_(True)
    return tuned


def peft_model(model: nn.Module, targets, cfg, modules_to_save: list[str] | None = None,
               section: str = "tuning") -> nn.Module:
    from peft import LoraConfig, get_peft_model  # seconds to import: only LoRA-based tuning needs it

    lora = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                      use_dora=cfg.name == "dora", modules_to_save=modules_to_save)
    try:
        return get_peft_model(model, lora)
    except ValueError as e:  # peft's NoMatchingPeftModuleError
        raise ConfigError(f"{section}.target_modules {cfg.target_modules} match no module of {_name(model)} "
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
