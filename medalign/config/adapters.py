"""Fine-tuning adapter configs, one class each, filed in ADAPTERS under the name YAML uses."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from medalign.config.loading import Section
from medalign.registry import Registry

ADAPTERS: Registry[type[Section]] = Registry("adapter")


@ADAPTERS.register("linear")
class LinearAdapter(Section):
    """Linear probe: the backbone stays frozen (and in eval mode), only the classifier head trains."""
    name: Literal["linear"] = "linear"


@ADAPTERS.register("lora")
class LoraAdapter(Section):
    """LoRA (Hu et al. 2021) through peft; timm ViTs fuse q, k, v into one `qkv` linear."""
    name: Literal["lora"] = "lora"
    r: int = Field(8, ge=1)
    alpha: float = 16.0
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["qkv"]


@ADAPTERS.register("full")
class FullAdapter(Section):
    """Every weight trains: the reference the adapters are measured against."""
    name: Literal["full"] = "full"
