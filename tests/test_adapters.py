"""The exact trainable set of every fine-tuning adapter on the four families users bring: a ViT
(vit_tiny), a hierarchical ViT (tiny_vit), a ResNet and an EfficientNet. Expected sets are written
from timm's module names here, not from the code under test."""
from __future__ import annotations

import re

import pytest
import timm
import torch
from torch import nn

from medalign import config
from medalign.errors import ConfigError
from medalign.models import adapters, backbones, tuning  # noqa: F401  (backbones registers litemedsam)

MODELS = ("vit_tiny_patch16_224", "tiny_vit_5m_224", "resnet18", "tf_efficientnet_lite0")
HEAD = {"vit_tiny_patch16_224": "head", "tiny_vit_5m_224": "head.fc", "resnet18": "fc",
        "tf_efficientnet_lite0": "classifier"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def built() -> dict[str, dict[str, torch.Tensor]]:
    """Each model's parameter names, built once (building is the slow part)."""
    return {n: dict(timm.create_model(n, num_classes=2).named_parameters()) for n in MODELS}


def _model(name: str) -> nn.Module:
    return timm.create_model(name, num_classes=2)


def _trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _head(name: str, params) -> set[str]:
    return {n for n in params if n.startswith(HEAD[name] + ".")}


@pytest.mark.parametrize("name", MODELS)
def test_linear_trains_the_head_alone_and_full_everything(name, built):
    params = built[name]
    assert _trainable(adapters.apply(_model(name), config.LinearAdapter())) == _head(name, params)
    assert _trainable(adapters.apply(_model(name), config.FullAdapter())) == set(params)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("norms", [True, False])
def test_bitfit_trains_biases_and_optionally_norms(name, norms, built):
    model = _model(name)
    norm_weights = {f"{m}.weight" for m, mod in model.named_modules() if isinstance(mod, tuning.NORMS)}
    expected = {n for n in built[name] if n.endswith(".bias")} | _head(name, built[name])
    if norms:
        expected |= norm_weights
    got = _trainable(adapters.apply(model, config.BitFitTuning(norms=norms)))
    assert got == expected
    assert got & norm_weights if norms else not got & norm_weights


@pytest.mark.parametrize("name,last", [
    ("vit_tiny_patch16_224", r"^(blocks\.11\.|norm\.|head\.)"),
    ("tiny_vit_5m_224", r"^(stages\.3\.|head\.)"),
    ("resnet18", r"^(layer4\.|fc\.)"),
    ("tf_efficientnet_lite0", r"^(blocks\.6\.|conv_head\.|bn2\.|classifier\.)"),
])
def test_partial_trains_the_last_block_or_stage_and_what_follows(name, last, built):
    got = _trainable(adapters.apply(_model(name), config.PartialAdapter(blocks=1)))
    assert got == {n for n in built[name] if re.match(last, n)}


def test_partial_counts_blocks_from_timms_group_matcher(built):
    got = _trainable(adapters.apply(_model("resnet18"), config.PartialAdapter(blocks=2)))
    assert got == {n for n in built["resnet18"] if re.match(r"^(layer3\.|layer4\.|fc\.)", n)}
    with pytest.raises(ConfigError, match=r"adapter.blocks=5: resnet18 has 4 blocks or stages"):
        adapters.apply(_model("resnet18"), config.PartialAdapter(blocks=5))


@pytest.mark.parametrize("name,projections", [("vit_tiny_patch16_224", 12), ("tiny_vit_5m_224", 10)])
def test_apla_trains_attention_output_projections(name, projections, built):
    got = _trainable(adapters.apply(_model(name), config.AplaTuning()))
    proj = {n for n in built[name] if re.search(r"attn\.proj\.(weight|bias)$", n)}
    assert len(proj) == 2 * projections
    assert got == proj | _head(name, built[name])


def test_apla_refuses_a_cnn():
    with pytest.raises(ConfigError, match="resnet18 has no attention output projections"):
        adapters.apply(_model("resnet18"), config.AplaTuning())


# LoRA's preset targets, by family, as timm names the modules
PRESET = {
    "vit_tiny_patch16_224": r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))$",
    "tiny_vit_5m_224": r"stages\.\d\.blocks\.\d\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))$",
    "resnet18": r"layer\d\.\d\.(conv1|conv2|downsample\.0)$",
    "tf_efficientnet_lite0": r"(blocks\.\d\.\d\.(conv_pw|conv_pwl)|conv_head)$",
}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_lora_and_dora_adapt_the_family_preset_and_train_the_head(name, kind, built):
    model = _model(name)
    targets = {n for n, _ in model.named_modules() if re.search(PRESET[name], n)}
    assert targets and set(tuning.lora_targets(model)) == targets
    cfg = (config.LoraAdapter if kind == "lora" else config.DoraAdapter)(r=4)
    got = _trainable(adapters.apply(model, cfg))
    prefix = "base_model.model."
    lora = {n for n in got if ".lora_" in n}
    assert {n[len(prefix):].split(".lora_")[0] for n in lora} == targets
    magnitudes = {n for n in lora if "lora_magnitude_vector" in n}
    assert bool(magnitudes) == (kind == "dora")
    # the head trains through peft's modules_to_save copy; nothing else does
    rest = got - lora
    assert rest and all(n.startswith(f"{prefix}{HEAD[name]}.modules_to_save.") for n in rest)


def test_lora_on_named_modules_only():
    model = adapters.apply(_model("vit_tiny_patch16_224"), config.LoraAdapter(r=2, target_modules=["qkv"]))
    adapted = {n.split(".lora_")[0] for n in _trainable(model) if ".lora_" in n}
    assert len(adapted) == 12 and all(n.endswith("attn.qkv") for n in adapted)
