"""Parameter-efficient continued pretraining: the exact trainable sets, shared rows, plain-timm saves."""
from __future__ import annotations

import dataclasses

import pytest
import timm
import torch
from safetensors.torch import load_file

from medalign import config
from medalign.config import BackboneConfig
from medalign.models import backbones, tuning

VIT = dict(name="test_vit", kwargs={"patch_size": 8}, img_size=32)


pytestmark = pytest.mark.usefixtures("one_thread")


def _tuned(cfg, spec=VIT, seed=0):
    bb = dataclasses.replace(backbones.resolve(BackboneConfig(**spec)), tuning=cfg, tuning_seed=seed)
    torch.manual_seed(0)
    return bb.create()


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _share(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad) / sum(p.numel() for p in model.parameters())


def test_apla_trains_r_rows_of_each_output_projection_and_nothing_else():
    small = dict(name="vit_small_patch16_224", kwargs={}, img_size=32)
    model = _tuned(config.AplaTuning(r=64), small)
    names = _trainable(model)
    assert names == {f"blocks.{i}.attn.proj.{p}" for i in range(12) for p in ("rows", "bias_rows")}
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 12 * 64 * (384 + 1)
    assert _share(model) < 0.02

    whole = _tuned(config.AplaTuning(), small)
    assert _trainable(whole) == {f"blocks.{i}.attn.proj.{p}" for i in range(12) for p in ("weight", "bias")}


def test_apla_rows_are_the_same_in_student_and_teacher_and_differ_between_blocks(demo_set):
    from medalign import ssl
    cfg = config.load(config.PretrainConfig, None, [
        f"data.manifest={demo_set}", "backbone.name=test_vit", "backbone.kwargs.patch_size=8", "backbone.img_size=32",
        "method.out_dim=16", "method.hidden_dim=8", "method.bottleneck_dim=4", "tuning.name=apla", "tuning.r=4"])
    bb = dataclasses.replace(backbones.resolve(cfg.backbone), tuning=cfg.tuning, tuning_seed=cfg.seed)
    dino, _ = ssl.build(cfg.method, cfg, bb)
    rows = [b.attn.proj.index for b in dino.student.blocks]
    assert all(torch.equal(r, b.attn.proj.index) for r, b in zip(rows, dino.teacher.blocks))
    assert not torch.equal(rows[0], rows[1])
    other_seed = dataclasses.replace(bb, tuning_seed=1).create()
    assert not torch.equal(rows[0], other_seed.blocks[0].attn.proj.index)


def test_explora_trains_the_last_blocks_norms_and_lora_elsewhere():
    small = dict(name="vit_small_patch16_224", kwargs={}, img_size=32)
    model = _tuned(config.ExploraTuning(unfrozen_blocks=1, r=8), small)
    names = _trainable(model)
    assert all(".blocks.11." in n or "norm" in n or "lora_" in n for n in names)
    assert {n for n in names if "lora_" in n} == {n for n in names if "lora_" in n and ".blocks.11." not in n}
    assert any(".blocks.10.attn.qkv.lora_A" in n for n in names) and not any(".blocks.11.attn.qkv.lora" in n for n in names)
    assert any(".blocks.11.mlp.fc1.weight" in n for n in names) and any(".blocks.3.norm1.weight" in n for n in names)
    assert not any(".blocks.10.mlp.fc1.weight" in n or "patch_embed" in n for n in names)
    assert _share(model) < 0.15


def test_frozen_n_freezes_the_stem_and_the_first_blocks():
    model = _tuned(config.FrozenTuning(blocks=2))
    names = _trainable(model)
    plain = timm.create_model("test_vit", patch_size=8, img_size=32, num_classes=0)
    want = {n for n, _ in plain.named_parameters()
            if not n.startswith(("cls_token", "pos_embed", "patch_embed", "blocks.0.", "blocks.1."))}
    assert names == want and "blocks.2.attn.qkv.weight" in names
    resnet = _tuned(config.FrozenTuning(blocks=1), dict(name="test_resnet", kwargs={}, img_size=32))
    assert not any(n.startswith(("conv1", "bn1", "layer1.")) for n in _trainable(resnet))
    assert any(n.startswith("layer2.") for n in _trainable(resnet))


def test_lora_and_bitfit_train_what_they_say():
    lora = _tuned(config.LoraAdapter(r=2, target_modules=["qkv"]))
    assert _trainable(lora) and all("lora_" in n for n in _trainable(lora))
    bitfit = _tuned(config.BitFitTuning(), dict(name="test_resnet", kwargs={}, img_size=32))
    norms = {f"{m}.{p}" for m, mod in bitfit.named_modules() if isinstance(mod, torch.nn.BatchNorm2d)
             for p, _ in mod.named_parameters()}
    assert _trainable(bitfit) == norms | {n for n, _ in bitfit.named_parameters() if n.endswith(".bias")}
    assert "conv1.0.weight" not in _trainable(bitfit) and "bn1.weight" in _trainable(bitfit)


@pytest.mark.parametrize("cfg", [config.AplaTuning(r=4), config.ExploraTuning(unfrozen_blocks=1, r=2),
                                 config.LoraAdapter(r=2)], ids=["apla", "explora", "lora"])
def test_merged_backbone_is_plain_timm_with_equal_outputs(cfg, tmp_path):
    model = _tuned(cfg)
    with torch.no_grad():  # move what trains, so that merging has something to carry
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2, 1, 32, 32)
    model.eval()
    with torch.no_grad():
        want = model(x)
    plain = tuning.merged(model)
    fresh = timm.create_model("test_vit", patch_size=8, img_size=32, in_chans=1, num_classes=0)
    fresh.load_state_dict(plain.state_dict())  # strict: exactly timm's keys
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), want, rtol=1e-5, atol=1e-5)


def test_pretrain_with_lora_saves_plain_timm_and_the_adapter_and_reports_its_share(demo_set, tmp_path):
    stage = config.STAGES["pretrain"]
    cfg = config.load(stage.config, None, [
        f"data.manifest={demo_set}", "backbone.name=test_vit", "backbone.kwargs.patch_size=8", "backbone.img_size=32",
        "method.name=simclr", "tuning.name=lora", "tuning.r=2", "data.batch_size=8", "optim.epochs=1",
        "runtime.device=cpu"])
    out = tmp_path / "pre"
    out.mkdir()
    metrics = stage.run(cfg, out)
    assert 0 < metrics["trainable_fraction"] < 0.2 and metrics["peak_memory_mib"] > 0
    saved = load_file(str(out / "checkpoint" / "model.safetensors"))
    assert set(saved) == set(timm.create_model("test_vit", patch_size=8, img_size=32, in_chans=1,
                                               num_classes=0).state_dict())
    assert (out / "adapter" / "adapter_config.json").is_file()
