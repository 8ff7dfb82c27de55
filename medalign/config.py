"""Typed stage configs: a YAML file plus `key=value` overrides, validated by pydantic.

Every stage has one config class below. Unknown keys and wrong types are errors that name the key
and where it came from. Fields marked `cosmetic` (worker counts, device) change how a stage runs,
not what it computes, so they stay out of the cache key.

This module must not import torch: `medalign --help` and `medalign status` load configs too.
"""
from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medalign.errors import ConfigError


def cosmetic(default: Any, description: str = "") -> Any:
    return Field(default, description=description, json_schema_extra={"cosmetic": True})


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- shared sections ---------------------------------------------------------------------------

class BackboneConfig(Section):
    name: str = Field("vit_tiny_patch16_224", description="timm model name")
    kwargs: dict[str, Any] = Field(default_factory=dict,
                                   description="extra timm.create_model arguments, e.g. {patch_size: 8}")
    pretrained: bool = Field(False, description="download timm's pretrained weights (needs internet)")
    checkpoint: str | None = Field(None, description="local weights: a medalign checkpoint folder or "
                                   "stage output, or a .safetensors/.pth file in timm layout")
    in_chans: int = Field(1, description="input channels; grayscale stays 1 unless the weights need 3")
    img_size: int = Field(64, description="input size in pixels")


class OptimConfig(Section):
    lr: float = Field(5e-4, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.04, ge=0)
    epochs: int = Field(10, ge=1)
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up, then cosine decay to 0")
    clip_grad: float | None = Field(3.0, description="max gradient norm; null disables clipping")


class AugmentConfig(Section):
    """Intensity and geometry augmentation; colour jitter is left out on purpose (grayscale)."""
    crop_scale: tuple[float, float] = Field((0.4, 1.0), description="RandomResizedCrop area range")
    hflip: bool = Field(False, description="left-right flips; off by default since anatomy is lateralised")
    brightness_contrast: float = Field(0.3, ge=0, description="max brightness/contrast change")
    blur_p: float = Field(0.3, ge=0, le=1)
    noise_p: float = Field(0.3, ge=0, le=1)


class Runtime(Section):
    device: str = cosmetic("auto", "auto, cpu, cuda or cuda:N")
    num_workers: int = cosmetic(0, "DataLoader worker processes")
    amp: bool = Field(True, description="bfloat16 autocast on CUDA (ignored on CPU)")


# the presets of medalign.data.readers.CT_WINDOWS (a test keeps the two in step)
CTWindow = Literal["lung", "mediastinum", "bone", "brain"]


class Intensity(Section):
    """How pixel values become [0, 1] before augmentation, per modality; saved with the model."""
    window: CTWindow | tuple[float, float] | None = Field(
        None, description="CT window in HU (lung, mediastinum, bone, brain or [centre, width]); default: the "
                          "DICOM's own window, NIfTI's percentile scaling")
    percentiles: tuple[float, float] | None = Field(
        None, description="clip each image to these percentiles, then [0, 1] (MR, X-ray), e.g. [0.5, 99.5]")
    zscore: bool = Field(False, description="standardise each image (mean 0, std 1) instead of the backbone's mean/std")

    def reader_args(self) -> dict:
        """What `read_image` and the preprocessing cache take; zscore acts later, in the transform."""
        return {"window": self.window, "percentiles": self.percentiles}

ON_ERROR_HELP = "a missing or unreadable image: fail (name them all) or skip (listed in skipped.csv)"
CACHE_HELP = ("decode and resize each image once into a memory-mapped cache ($MEDALIGN_CACHE, "
              "default ~/.cache/medalign); later epochs and stages read it")


# -- stage configs -----------------------------------------------------------------------------

class DemoDataConfig(Section):
    n_unlabeled: int = Field(600, ge=0)
    n_train: int = Field(120, ge=0)
    n_val: int = Field(60, ge=0)
    n_test: int = Field(200, ge=0)
    img_size: int = Field(64, ge=16)
    lesion_fraction: float = Field(0.5, ge=0, le=1)
    seed: int = 0


class DinoConfig(Section):
    """DINO (Caron et al. 2021) on lightly's DINOLoss and DINOProjectionHead."""
    name: Literal["dino"] = "dino"
    out_dim: int = Field(2048, description="prototypes; 65536 in the paper, far fewer suit small sets")
    hidden_dim: int = 512
    bottleneck_dim: int = 128
    n_local_crops: int = Field(4, ge=0)
    local_crop_scale: tuple[float, float] = (0.1, 0.4)
    teacher_momentum: float = Field(0.996, description="EMA start; cosine-scheduled to 1")
    teacher_temp: float = 0.04
    student_temp: float = 0.1


class SimCLRConfig(Section):
    """SimCLR (Chen et al. 2020) on lightly's NTXentLoss, negatives gathered across ranks."""
    name: Literal["simclr"] = "simclr"
    out_dim: int = 128
    hidden_dim: int = 512
    temperature: float = 0.1


SSLMethod = Annotated[Union[DinoConfig, SimCLRConfig], Field(discriminator="name")]


class PretrainData(Section):
    manifest: str = Field(..., description="manifest CSV; labels are ignored")
    splits: list[str] = Field(["unlabeled", "train"],
                              description="rows used; keep val/test out of pretraining")
    intensity: Intensity = Intensity()
    on_error: Literal["fail", "skip"] = Field("fail", description=ON_ERROR_HELP)
    cache: bool = Field(False, description=CACHE_HELP)
    batch_size: int = Field(64, ge=1)


class PretrainConfig(Section):
    seed: int = 0
    backbone: BackboneConfig = BackboneConfig()
    method: SSLMethod = DinoConfig()
    data: PretrainData
    augment: AugmentConfig = AugmentConfig()
    optim: OptimConfig = OptimConfig()
    runtime: Runtime = Runtime()

    def inputs(self) -> dict[str, str | None]:
        return {"data.manifest": self.data.manifest, "backbone.checkpoint": self.backbone.checkpoint}


class LinearAdapter(Section):
    """Linear probe: the backbone stays frozen, only the classifier head trains."""
    name: Literal["linear"] = "linear"


class FullAdapter(Section):
    """Every weight trains: the reference the adapters are measured against."""
    name: Literal["full"] = "full"


class LoraAdapter(Section):
    """LoRA (Hu et al. 2021) through peft; timm ViTs fuse q, k, v into one `qkv` linear."""
    name: Literal["lora"] = "lora"
    r: int = Field(8, ge=1)
    alpha: float = 16.0
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["qkv"]


Adapter = Annotated[Union[LinearAdapter, LoraAdapter, FullAdapter], Field(discriminator="name")]


class FinetuneData(Section):
    manifest: str
    train_split: str = "train"
    val_split: str = "val"
    intensity: Intensity = Intensity()
    on_error: Literal["fail", "skip"] = Field("fail", description=ON_ERROR_HELP)
    cache: bool = Field(False, description=CACHE_HELP)
    batch_size: int = Field(32, ge=1)


class FinetuneAugment(AugmentConfig):
    """Milder than pretraining: the labels must survive the augmentation."""
    crop_scale: tuple[float, float] = (0.7, 1.0)
    blur_p: float = Field(0.0, ge=0, le=1)
    noise_p: float = Field(0.0, ge=0, le=1)


class FinetuneOptim(OptimConfig):
    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.01, ge=0)


class FinetuneConfig(Section):
    seed: int = 0
    backbone: BackboneConfig = BackboneConfig()
    adapter: Adapter = LoraAdapter()
    data: FinetuneData
    # subclasses, not instances with other values: `optim.epochs=3` alone must keep these defaults
    augment: FinetuneAugment = FinetuneAugment()
    optim: FinetuneOptim = FinetuneOptim()
    runtime: Runtime = Runtime()

    def inputs(self) -> dict[str, str | None]:
        return {"data.manifest": self.data.manifest, "backbone.checkpoint": self.backbone.checkpoint}


class EvaluateData(Section):
    manifest: str
    split: str = "test"
    on_error: Literal["fail", "skip"] = Field("fail", description=ON_ERROR_HELP)
    cache: bool = Field(False, description=CACHE_HELP)
    batch_size: int = Field(64, ge=1)


class EvaluateConfig(Section):
    model: str = Field(..., description="a finetune output folder, or its model/ checkpoint folder")
    data: EvaluateData
    runtime: Runtime = Runtime()

    def inputs(self) -> dict[str, str | None]:
        return {"model": self.model, "data.manifest": self.data.manifest}


# -- loading -----------------------------------------------------------------------------------

def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top, got {type(data).__name__}")
    return data


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`a.b=value` sets a nested key (value parsed as YAML); `~a.b` deletes one, as in torchtune."""
    for item in overrides:
        if item.startswith("~"):
            *parents, leaf = item[1:].split(".")
            node = _descend(raw, parents, item)
            if leaf not in node:
                raise ConfigError(f"override {item}: no key '{item[1:]}' to delete")
            del node[leaf]
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        *parents, leaf = key.split(".")
        _descend(raw, parents, item)[leaf] = yaml.safe_load(value) if value else None
    return raw


def _descend(raw: dict, parents: list[str], item: str) -> dict:
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item}: '{part}' holds a value, not a section")
        node = child
    return node


def validate(cls: type[Section], raw: dict, source: str, overrides: list[str] = ()) -> Section:
    """Builds `cls` from raw; every problem is reported in one line naming the key and its source."""
    _fill_union_tags(cls, raw)
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        override_keys = {o.lstrip("~").partition("=")[0] for o in overrides}
        problems = []
        for err in e.errors():
            key = _dotted(err["loc"], raw)
            origin = "command line" if any(key == k or key.startswith(k + ".") for k in override_keys) else source
            problems.append(f"{key}: {_explain(err, cls, raw)} (in {origin})")
        raise ConfigError("config error: " + "; ".join(problems)) from None


def load(cls: type[Section], path: str | Path | None, overrides: list[str] = ()) -> Section:
    raw = read_yaml(path) if path else {}
    apply_overrides(raw, list(overrides))
    return validate(cls, raw, str(path) if path else "defaults", overrides)


def _fill_union_tags(cls: type[BaseModel], raw: dict) -> None:
    """`method.temperature=0.2` alone keeps the default method: fill in the tag the user left out."""
    for name, field in cls.model_fields.items():
        value, ann = raw.get(name), field.annotation
        if not isinstance(value, dict):
            continue
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            _fill_union_tags(ann, value)
        elif isinstance(field.default, BaseModel) and "name" in type(field.default).model_fields:
            value.setdefault("name", field.default.name)


def _dotted(loc: tuple, raw: Any) -> str:
    """pydantic puts the union tag (e.g. 'dino') into error locations; users never typed it."""
    parts, node = [], raw
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("name") == part:
            continue
        parts.append(str(part))
        node = node.get(part) if isinstance(node, dict) else None
    return ".".join(parts)


def _explain(err: dict, cls: type[Section], raw: dict) -> str:
    if err["type"] == "extra_forbidden":
        known = _known_keys(cls, err["loc"][:-1], raw)
        close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
        return "unknown key" + (f" (did you mean '{close[0]}'?)" if close else "")
    if err["type"] == "missing":
        return "required but not set"
    return f"{err['msg']}, got {err.get('input')!r}"


def _known_keys(cls: type[Section], loc: tuple, raw: dict) -> list[str]:
    model: Any = cls
    for part in loc:
        fields = getattr(model, "model_fields", {})
        if part in fields:
            model = fields[part].annotation
        # a tagged union: follow the member whose tag matches
        for member in getattr(model, "__args__", ()):
            for m in getattr(member, "__args__", (member,)):
                if getattr(m, "model_fields", {}).get("name") and m.model_fields["name"].default == part:
                    model = m
    return list(getattr(model, "model_fields", {}))


# -- what goes into cache keys -----------------------------------------------------------------

def semantic(cfg: BaseModel) -> dict:
    """The config as JSON-able data, cosmetic fields left out."""
    out = {}
    for name, field in type(cfg).model_fields.items():
        if (field.json_schema_extra or {}).get("cosmetic"):
            continue
        value = getattr(cfg, name)
        out[name] = semantic(value) if isinstance(value, BaseModel) else _jsonable(value)
    return out


def digest(obj: Any) -> str:
    """sha256 of canonical JSON (sorted keys), as DVC hashes its stage entries."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def dump(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def describe(cls: type[BaseModel], prefix: str = "", tag: str = "") -> list[str]:
    """One line per leaf key with its default, for `--help`; union members are tagged by name."""
    lines = []
    for name, field in cls.model_fields.items():
        key, ann = prefix + name, field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines += describe(ann, key + ".", tag)
            continue
        members = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        if members:
            tags = [m.model_fields["name"].default for m in members]
            lines.append(f"  {key}.name  (default {field.default.name!r})  one of {', '.join(tags)}")
            for member, t in zip(members, tags):
                lines += [line for line in describe(member, key + ".", t) if not line.startswith(f"  {key}.name ")]
            continue
        default = "required" if field.is_required() else f"default {field.get_default(call_default_factory=True)!r}"
        only = f", {tag} only" if tag else ""
        doc = f"  {field.description}" if field.description else ""
        lines.append(f"  {key}  ({default}{only}){doc}")
    return lines
