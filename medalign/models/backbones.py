"""Backbones come from timm; local weights are adapted the way timm adapts its own.

`resolve` reads a backbone config once into a `Backbone`: a checkpoint's model.json decides the
architecture (name, kwargs, in_chans) and normalisation, so a pretrain output loads without
repeating its config. Input channels are folded (RGB weights -> 1 channel) and ViT
position embeddings resampled to a new image size, as timm does for its pretrained weights.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.models import adapt_input_conv

from medalign.config import BackboneConfig
from medalign.errors import CheckpointError, ConfigError
from medalign.models import checkpoint, litemedsam  # noqa: F401  (litemedsam_tinyvit joins timm's registry)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backbone:
    """A backbone config resolved once: what to build, how to normalise, which weights to load."""
    name: str
    kwargs: dict
    in_chans: int
    img_size: int
    mean: list[float]
    std: list[float]
    weights: Path | None = None  # a local weights file
    pretrained: bool = False  # timm's hub weights
    meta: dict | None = None  # the weights' model.json
    starting_point: dict | None = None  # a named offline start: name, package, version, sha256, licence
    tuning: object | None = None  # a pretraining `tuning` config, applied to every network created
    tuning_seed: int = 0

    @property
    def arch(self) -> dict:
        return {"name": self.name, "kwargs": self.kwargs, "in_chans": self.in_chans}

    @property
    def normalization(self) -> dict:
        return {"mean": self.mean, "std": self.std}

    def as_config(self, cfg: BackboneConfig) -> BackboneConfig:
        """`cfg` with what was actually built, for the recorded config.yaml."""
        return cfg.model_copy(update={"name": self.name, "kwargs": self.kwargs, "in_chans": self.in_chans})

    def create(self, num_classes: int = 0, **extra) -> torch.nn.Module:
        kwargs = {**self.kwargs, **extra, "in_chans": self.in_chans, "num_classes": num_classes}
        if self.pretrained:
            return _from_hub(self.name, self.img_size, kwargs)
        model = _build(self.name, self.img_size, kwargs, pretrained=False)
        if self.weights:
            load_into(model, checkpoint.load_state_dict(self.weights), self.weights)
        if self.tuning is not None:
            from medalign.models import tuning

            model = tuning.apply(model, self.tuning, self.tuning_seed)
        return model


def resolve(cfg: BackboneConfig) -> Backbone:
    """The checkpoint's model.json, when there is one, decides architecture and normalisation, so
    every stage downstream builds and normalises as pretraining did."""
    if cfg.weights and cfg.checkpoint:
        raise ConfigError("backbone.weights and backbone.checkpoint are both set: choose one starting point")
    weights, meta = checkpoint.locate(cfg.checkpoint) if cfg.checkpoint else (None, None)
    name, kwargs, in_chans = cfg.name, dict(cfg.kwargs), cfg.in_chans
    start = meta.get("starting_point") if meta else None
    if cfg.weights:
        from medalign.models import weights as named  # imports timm's model files only when asked

        found = named.locate(cfg.weights)
        weights, name, kwargs, start = found.file, found.model, {**found.kwargs, **kwargs}, found.record
    if meta:
        a = meta["architecture"]
        if (a["name"], a["kwargs"], a["in_chans"]) != (name, kwargs, in_chans):
            log.info("backbone: architecture from %s's model.json: %s %s in_chans=%d",
                     cfg.checkpoint, a["name"], a["kwargs"], a["in_chans"])
        name, kwargs, in_chans = a["name"], dict(a["kwargs"]), a["in_chans"]
    norm = meta["normalization"] if meta and "normalization" in meta else _normalization(name, in_chans)
    return Backbone(name, kwargs, in_chans, cfg.img_size, norm["mean"], norm["std"], weights,
                    pretrained=cfg.pretrained and not (cfg.checkpoint or cfg.weights), meta=meta,
                    starting_point=start)


def create(cfg: BackboneConfig, num_classes: int = 0, **extra) -> torch.nn.Module:
    return resolve(cfg).create(num_classes, **extra)


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source) -> None:
    """Adapts `state` to `model` (input channels, position embeddings, classifier) and loads it."""
    pcfg = model.pretrained_cfg
    # timm's own converter for the family: original DINOv2/MAE/CLIP layouts, position embeddings
    # resampled to this image size, patch embeddings to this patch size
    family_filter = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if family_filter is not None:
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


def _normalization(name: str, in_chans: int) -> dict:
    """The mean/std timm's weights for `name` were trained with, averaged over RGB for 1 channel."""
    pcfg = timm.models.get_pretrained_cfg(name)
    mean = tuple(pcfg.mean) if pcfg else (0.5,) * 3
    std = tuple(pcfg.std) if pcfg else (0.5,) * 3
    if in_chans != len(mean):
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
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
