"""Backbones come from timm; local weights are adapted the way timm adapts its own.

A checkpoint's model.json decides the architecture (name, kwargs, in_chans), so a pretrain output
loads without repeating its config. Input channels are folded (RGB weights -> 1 channel) and ViT
position embeddings resampled to a new image size, as timm does for its pretrained weights.
"""
from __future__ import annotations

import logging
import sys

import timm
import torch
from timm.models import adapt_input_conv

from medalign.config import BackboneConfig
from medalign.errors import CheckpointError, ConfigError
from medalign.models import checkpoint

log = logging.getLogger(__name__)


def architecture(cfg: BackboneConfig) -> dict:
    """name, kwargs and in_chans: from the checkpoint's model.json when there is one."""
    arch = {"name": cfg.name, "kwargs": dict(cfg.kwargs), "in_chans": cfg.in_chans}
    if cfg.checkpoint:
        _, meta = checkpoint.locate(cfg.checkpoint)
        if meta:
            arch = {k: meta["architecture"][k] for k in arch}
    return arch


def create(cfg: BackboneConfig, num_classes: int = 0, **extra) -> torch.nn.Module:
    arch = architecture(cfg)
    if arch["name"] != cfg.name or arch["kwargs"] != cfg.kwargs or arch["in_chans"] != cfg.in_chans:
        log.info("backbone: architecture from %s's model.json: %s %s in_chans=%d",
                 cfg.checkpoint, arch["name"], arch["kwargs"], arch["in_chans"])
    kwargs = {**arch["kwargs"], **extra, "in_chans": arch["in_chans"], "num_classes": num_classes}
    if cfg.pretrained and not cfg.checkpoint:
        return _from_hub(arch["name"], cfg.img_size, kwargs)
    model = _build(arch["name"], cfg.img_size, kwargs, pretrained=False)
    if cfg.checkpoint:
        weights, _ = checkpoint.locate(cfg.checkpoint)
        load_into(model, checkpoint.load_state_dict(weights), weights)
    return model


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source) -> None:
    """Adapts `state` to `model` (input channels, position embeddings, classifier) and loads it."""
    pcfg = model.pretrained_cfg
    family_filter = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if family_filter is not None and "pos_embed" in state:
        state = family_filter(state, model)
    first = f"{pcfg.get('first_conv')}.weight"
    if first in state and first in model.state_dict():
        want, w = model.state_dict()[first].shape[1], state[first]
        if w.shape[1] != want:
            try:
                state[first] = adapt_input_conv(want, w, base_chans=w.shape[1])
            except (NotImplementedError, ValueError, AssertionError) as e:
                raise CheckpointError(f"{source}: cannot adapt {first} from {w.shape[1]} to {want} "
                                      f"input channels ({e})") from None
    heads = tuple(head_names(model))
    own = model.state_dict()
    for k in [k for k in state if _under(k, heads) and (k not in own or state[k].shape != own[k].shape)]:
        del state[k]  # a head trained for other classes, or none wanted: the new one starts fresh
    checkpoint.check_fit(model, state, source, allowed_missing=heads)
    model.load_state_dict(state, strict=False)


def head_names(model: torch.nn.Module) -> list[str]:
    """The classifier module(s); distilled ViTs have two."""
    c = model.pretrained_cfg.get("classifier", "head")
    return [c] if isinstance(c, str) else list(c)


def _under(key: str, modules: tuple[str, ...]) -> bool:
    return any(key == m or key.startswith(m + ".") for m in modules)


def normalization(cfg: BackboneConfig) -> dict:
    """The mean/std the weights were trained with (averaged over RGB for 1 channel).

    A checkpoint's own model.json wins, so every stage downstream normalises as pretraining did.
    """
    if cfg.checkpoint:
        _, meta = checkpoint.locate(cfg.checkpoint)
        if meta and "normalization" in meta:
            return meta["normalization"]
    arch = architecture(cfg)
    pcfg = timm.models.get_pretrained_cfg(arch["name"])
    mean = tuple(pcfg.mean) if pcfg else (0.5,) * 3
    std = tuple(pcfg.std) if pcfg else (0.5,) * 3
    n = arch["in_chans"]
    if n != len(mean):
        mean, std = (sum(mean) / len(mean),) * n, (sum(std) / len(std),) * n
    return {"mean": [float(m) for m in mean], "std": [float(s) for s in std]}


def _build(name: str, img_size: int, kwargs: dict, pretrained: bool) -> torch.nn.Module:
    if not timm.is_model(name):
        raise ConfigError(f"backbone.name: unknown timm model '{name}' (see timm.list_models())")
    if "img_size" in kwargs:
        raise ConfigError("backbone.kwargs.img_size: set backbone.img_size instead")
    try:
        try:
            return timm.create_model(name, pretrained=pretrained, img_size=img_size, **kwargs)
        except TypeError as e:
            if "img_size" not in str(e):
                raise
        # CNNs take any input size and have no img_size argument
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as e:
        raise ConfigError(f"backbone.kwargs {kwargs} do not fit {name}: {e}") from None


def _from_hub(name: str, img_size: int, kwargs: dict) -> torch.nn.Module:
    try:
        return _build(name, img_size, kwargs, pretrained=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"could not fetch pretrained weights for {name} ({str(e).splitlines()[0][:200]}); offline? "
            "download them where there is a network and set backbone.checkpoint=FILE") from None
