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
    """LoRA (Hu et al. 2021) through peft, on the family's preset modules unless named."""
    name: Literal["lora"] = "lora"
    r: int = Field(8, ge=1)
    alpha: float = 16.0
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = Field(
        None, description="module names or suffixes; null: attention qkv/proj and MLP linears of transformer "
        "blocks (ViT, TinyViT), else every full convolution but the stem (EfficientNet: the pointwise ones)")


@ADAPTERS.register("dora")
class DoraAdapter(LoraAdapter):
    """DoRA (Liu et al. 2024): LoRA on the direction, a trained magnitude per output (peft's use_dora)."""
    name: Literal["dora"] = "dora"


@ADAPTERS.register("full")
class FullAdapter(Section):
    """Every weight trains: the reference the adapters are measured against."""
    name: Literal["full"] = "full"


@ADAPTERS.register("partial")
class PartialAdapter(Section):
    """The last `blocks` blocks (ViT) or stages (CNN) as timm groups them, what follows them, and the head."""
    name: Literal["partial"] = "partial"
    blocks: int = Field(1, ge=1)


# -- which weights train during continued pretraining: the adapters where they coincide ----------

TUNINGS: Registry[type[Section]] = Registry("tuning")
TUNINGS.register("full")(FullAdapter)
TUNINGS.register("lora")(LoraAdapter)


@TUNINGS.register("frozen")
class FrozenTuning(Section):
    """The first `blocks` blocks (ViT) or stages (CNN), and the stem before them, stay frozen."""
    name: Literal["frozen"] = "frozen"
    blocks: int = Field(..., ge=0)


@ADAPTERS.register("apla")
@TUNINGS.register("apla")
class AplaTuning(Section):
    """APLA (Sorkhei et al. 2025): in every attention block only the output projection trains, all of
    it (r: null, the ESSA recipe) or r of its output rows, drawn once per block from the seed."""
    name: Literal["apla"] = "apla"
    r: int | None = Field(None, ge=1, description="output rows trained per block; null: the whole projection")


@TUNINGS.register("explora")
class ExploraTuning(Section):
    """ExPLoRA (Khanna et al. 2025): the last `unfrozen_blocks` blocks and every norm train, LoRA elsewhere."""
    name: Literal["explora"] = "explora"
    unfrozen_blocks: int = Field(1, ge=0)
    r: int = Field(8, ge=1)
    alpha: float = 16.0
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["qkv"]


@ADAPTERS.register("bitfit")
@TUNINGS.register("bitfit")
class BitFitTuning(Section):
    """BitFit (Ben Zaken et al. 2022): biases only, and norm layers too unless `norms: false` (a CNN's
    BatchNorm then follows the new domain while its filters stay)."""
    name: Literal["bitfit"] = "bitfit"
    norms: bool = True
