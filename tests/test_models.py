"""Tests for backbones, the checkpoint format and adapters (medalign.models).

Everything runs on CPU with timm's tiny test models (test_vit, test_resnet) at 32 px.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from medalign.config import BackboneConfig, LinearAdapter, LoraAdapter
from medalign.errors import CheckpointError, ConfigError
from medalign.models import adapters, backbones, checkpoint, tuning

VIT = dict(name="test_vit", kwargs={"patch_size": 8}, img_size=32)
RESNET = dict(name="test_resnet", kwargs={}, img_size=32)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def _perturb(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Moves every parameter away from its initialisation, so a load that silently keeps the
    fresh init (or a zero-initialised tensor) cannot pass for a real one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def _save(model: torch.nn.Module, cfg: BackboneConfig, folder: Path, norm: dict | None = None) -> Path:
    """Writes a checkpoint the way medalign.stages.pretrain does."""
    arch = backbones.resolve(cfg).arch
    norm = norm or backbones.resolve(cfg).normalization
    return checkpoint.save(folder, model.state_dict(),
                           checkpoint.metadata(arch, cfg.img_size, norm, num_classes=0))


def _x(chans: int = 1, size: int = 32, n: int = 2) -> torch.Tensor:
    return torch.randn(n, chans, size, size, generator=torch.Generator().manual_seed(7))


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module, skip: tuple[str, ...] = ()) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        if not k.startswith(skip):
            assert torch.equal(sa[k], sb[k]), k


# -- 1. round trip ---------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [VIT, RESNET], ids=["test_vit", "test_resnet"])
def test_round_trip_gives_identical_tensors_and_outputs(tmp_path, spec):
    cfg = BackboneConfig(**spec)
    model = _perturb(backbones.create(cfg))
    folder = _save(model, cfg, tmp_path / "run" / "checkpoint")

    meta = json.loads((folder / checkpoint.META).read_text())
    assert meta["format"] == "medalign-checkpoint/1"
    assert meta["architecture"] == {"name": spec["name"], "kwargs": spec["kwargs"], "in_chans": 1}
    assert meta["img_size"] == 32 and meta["num_classes"] == 0
    assert meta["versions"]["timm"] == timm.__version__

    # the checkpoint folder itself, and the stage output that holds it in checkpoint/
    for where in (folder, tmp_path / "run"):
        loaded = backbones.create(BackboneConfig(checkpoint=str(where), img_size=32)).eval()
        assert loaded.pretrained_cfg["architecture"] == spec["name"]
        _assert_same_state(model, loaded)
        x = _x()
        with torch.no_grad():
            assert torch.equal(model(x), loaded(x))


def test_model_json_architecture_wins_over_config_name(tmp_path):
    cfg = BackboneConfig(**VIT)
    model = _perturb(backbones.create(cfg))
    _save(model, cfg, tmp_path)

    other = BackboneConfig(name="resnet18", in_chans=3, img_size=32, checkpoint=str(tmp_path))
    assert backbones.resolve(other).arch == {"name": "test_vit", "kwargs": {"patch_size": 8}, "in_chans": 1}
    loaded = backbones.create(other).eval()
    assert isinstance(loaded, timm.models.vision_transformer.VisionTransformer)
    assert loaded.pretrained_cfg["architecture"] == "test_vit"
    assert loaded.patch_embed.proj.weight.shape[1] == 1  # in_chans from model.json, not the config's 3
    _assert_same_state(model, loaded)


# -- 2. plain timm reads the weights ---------------------------------------------------------------

@pytest.mark.parametrize("spec", [VIT, RESNET], ids=["test_vit", "test_resnet"])
def test_saved_safetensors_loads_into_plain_timm(tmp_path, spec):
    cfg = BackboneConfig(**spec)
    model = _perturb(backbones.create(cfg))
    folder = _save(model, cfg, tmp_path)

    extra = {"img_size": 32} if spec["name"] == "test_vit" else {}
    plain = timm.create_model(spec["name"], num_classes=0, in_chans=1,
                              checkpoint_path=str(folder / checkpoint.WEIGHTS),
                              **spec["kwargs"], **extra).eval()
    x = _x()
    with torch.no_grad():
        assert torch.allclose(model(x), plain(x), atol=1e-6)
        # and it really is the checkpoint, not a fresh init that happens to agree
        fresh = timm.create_model(spec["name"], num_classes=0, in_chans=1, **spec["kwargs"], **extra).eval()
        assert not torch.allclose(fresh(x), plain(x), atol=1e-3)


# -- 3. prefixes and wrappers from other tools -----------------------------------------------------

@pytest.mark.parametrize("prefix,fmt", [
    ("module.backbone.", "safetensors"),
    ("_orig_mod.student_backbone.", "safetensors"),
    ("module.backbone.", "pth-state_dict"),
    ("backbone.", "pth-teacher"),
])
def test_wrapper_prefixes_are_stripped(tmp_path, prefix, fmt):
    cfg = BackboneConfig(**VIT)
    model = _perturb(backbones.create(cfg))
    state = {prefix + k: v.clone().contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        path = tmp_path / "ssl.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "ssl.pth"
        wrapper = fmt.split("-")[1]
        torch.save({wrapper: state, "epoch": 3}, path)

    loaded = backbones.create(BackboneConfig(**VIT, checkpoint=str(path))).eval()
    _assert_same_state(model, loaded)
    assert set(checkpoint.load_state_dict(path)) == set(model.state_dict())


# -- 4. adaptation: input channels, image size -----------------------------------------------------

@pytest.mark.parametrize("spec,first", [(VIT, "patch_embed.proj.weight"), (RESNET, "conv1.0.weight")],
                         ids=["test_vit", "test_resnet"])
def test_rgb_weights_fold_into_one_channel(tmp_path, spec, first):
    rgb = _perturb(backbones.create(BackboneConfig(**spec, in_chans=3)))
    path = tmp_path / "rgb.safetensors"  # no model.json beside it: the config decides in_chans
    save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, str(path))

    gray = backbones.create(BackboneConfig(**spec, in_chans=1, checkpoint=str(path))).eval()
    w = rgb.state_dict()[first]
    assert gray.state_dict()[first].shape[1] == 1
    assert torch.allclose(gray.state_dict()[first], w.sum(1, keepdim=True))
    for k, v in rgb.state_dict().items():
        if k != first:
            assert torch.equal(v, gray.state_dict()[k]), k
    # summed weights on a gray image == the RGB model on that image copied into 3 channels
    x = _x(1)
    with torch.no_grad():
        assert torch.allclose(gray(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-5)


def test_vit_weights_at_32px_load_at_64px(tmp_path):
    cfg = BackboneConfig(**VIT)
    small = _perturb(backbones.create(cfg))
    _save(small, cfg, tmp_path)

    big = backbones.create(BackboneConfig(checkpoint=str(tmp_path), img_size=64)).eval()
    old, new = small.pos_embed.detach(), big.pos_embed.detach()
    assert old.shape == (1, 1 + 4 * 4, 64) and new.shape == (1, 1 + 8 * 8, 64)
    assert torch.equal(new[:, :1], old[:, :1])  # class token position kept
    grid = old[:, 1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
    # timm resamples as for its own pretrained weights: bicubic with antialias (PIL's a=-0.5 kernel)
    want = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False, antialias=True)
    assert torch.allclose(new[:, 1:], want.permute(0, 2, 3, 1).reshape(1, 64, 64), atol=1e-5)
    for k, v in small.state_dict().items():
        if k != "pos_embed":
            assert torch.equal(v, big.state_dict()[k]), k
    with torch.no_grad():
        assert big(_x(1, 64)).shape == (2, 64)


# -- 5. checkpoints that do not fit ----------------------------------------------------------------

def _raw(model: torch.nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_other_architecture_is_refused_naming_path_and_keys(tmp_path):
    path = _raw(backbones.create(BackboneConfig(**RESNET)), tmp_path / "resnet.safetensors")
    vit_keys = set(backbones.create(BackboneConfig(**VIT)).state_dict())
    res_keys = set(checkpoint.load_state_dict(path))
    with pytest.raises(CheckpointError) as e:
        backbones.create(BackboneConfig(**VIT, checkpoint=str(path)))
    msg = str(e.value)
    assert str(path) in msg
    assert any(k in msg for k in vit_keys | res_keys), msg


def test_other_embed_dim_is_refused_as_shape_mismatch(tmp_path):
    narrow = backbones.create(BackboneConfig(name="test_vit", kwargs={"patch_size": 8, "embed_dim": 32},
                                             img_size=32))
    path = _raw(narrow, tmp_path / "narrow.safetensors")
    with pytest.raises(CheckpointError) as e:
        backbones.create(BackboneConfig(**VIT, checkpoint=str(path)))
    msg = str(e.value)
    assert str(path) in msg and "shape mismatch" in msg
    # a key, with the checkpoint's shape and the model's
    assert re.search(r"blocks\.\d+\.[\w.]+ \(\d+(, \d+)*\) vs \(\d+(, \d+)*\)", msg), msg


def test_missing_path_is_refused(tmp_path):
    gone = tmp_path / "nowhere" / "model.safetensors"
    with pytest.raises(CheckpointError, match="nowhere"):
        backbones.create(BackboneConfig(**VIT, checkpoint=str(gone)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="empty"):
        backbones.create(BackboneConfig(**VIT, checkpoint=str(empty)))


@pytest.mark.parametrize("name", ["junk.safetensors", "junk.pth"])
def test_file_that_is_not_weights_is_refused(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError) as e:
        backbones.create(BackboneConfig(**VIT, checkpoint=str(path)))
    assert str(path) in str(e.value)


def test_pth_without_tensors_is_refused(tmp_path):
    path = tmp_path / "notes.pth"
    torch.save({"lr": 0.1, "epochs": [1, 2]}, path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        checkpoint.load_state_dict(path)


def test_broken_model_json_is_refused(tmp_path):
    cfg = BackboneConfig(**VIT)
    _save(backbones.create(cfg), cfg, tmp_path)
    (tmp_path / checkpoint.META).write_text("{not json")
    with pytest.raises(CheckpointError, match="model.json"):
        backbones.create(BackboneConfig(checkpoint=str(tmp_path), img_size=32))


def test_new_head_on_headless_checkpoint(tmp_path):
    cfg = BackboneConfig(**VIT)
    body = _perturb(backbones.create(cfg))
    _save(body, cfg, tmp_path)

    clf = backbones.create(BackboneConfig(checkpoint=str(tmp_path), img_size=32), num_classes=2).eval()
    with torch.no_grad():
        assert clf(_x()).shape == (2, 2)
    for k, v in body.state_dict().items():
        assert torch.equal(v, clf.state_dict()[k]), k
    assert clf.head.weight.shape == (2, 64)

    # without allowed_missing, a state dict lacking the head does not fit
    headless = checkpoint.load_state_dict(tmp_path / checkpoint.WEIGHTS)
    with pytest.raises(CheckpointError) as e:
        checkpoint.check_fit(clf, headless, tmp_path / checkpoint.WEIGHTS)
    assert "head.weight" in str(e.value) and "missing" in str(e.value)
    checkpoint.check_fit(clf, headless, tmp_path / checkpoint.WEIGHTS, allowed_missing=("head",))


def test_head_of_other_size_is_replaced_same_size_is_kept(tmp_path):
    five = _perturb(backbones.create(BackboneConfig(**VIT), num_classes=5))
    path = _raw(five, tmp_path / "five.safetensors")

    same = backbones.create(BackboneConfig(**VIT, checkpoint=str(path)), num_classes=5)
    _assert_same_state(five, same)
    two = backbones.create(BackboneConfig(**VIT, checkpoint=str(path)), num_classes=2)
    assert two.head.weight.shape == (2, 64)
    assert not torch.equal(two.head.weight, five.head.weight[:2])  # a new head, not a slice of the old
    headless = backbones.create(BackboneConfig(**VIT, checkpoint=str(path)))  # num_classes=0: head dropped
    assert not any(k.startswith("head.") for k in headless.state_dict())
    for k, v in headless.state_dict().items():
        assert torch.equal(v, five.state_dict()[k]), k
        assert torch.equal(v, two.state_dict()[k]), k


# -- 6. no unpickling of arbitrary objects ---------------------------------------------------------

def _touch(path: str) -> int:
    Path(path).write_text("executed")
    return 0


class _Payload:
    """Pickles as a call to _touch: loading it with plain pickle writes the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (_touch, (self.marker,))


def test_pickled_object_is_refused_not_executed(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    state = backbones.create(BackboneConfig(**VIT)).state_dict()
    torch.save({"state_dict": state, "extra": _Payload(str(marker))}, path)

    with pytest.raises(CheckpointError) as e:
        backbones.create(BackboneConfig(**VIT, checkpoint=str(path)))
    assert str(path) in str(e.value)
    assert not marker.exists()
    # control: full unpickling would have run the payload
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_torch_load_is_only_called_with_weights_only(tmp_path, monkeypatch):
    model = _perturb(backbones.create(BackboneConfig(**VIT)))
    path = tmp_path / "plain.pth"
    torch.save({"model": model.state_dict()}, path)

    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loaded = backbones.create(BackboneConfig(**VIT, checkpoint=str(path)))
    _assert_same_state(model, loaded)
    assert calls and all(c is True for c in calls), calls


# -- 7. adapters -----------------------------------------------------------------------------------

def _names_ok(name: str) -> bool:
    return "lora_" in name or ".head." in name or name.startswith("head.")


def test_lora_trains_few_weights_then_merges_into_plain_timm():
    base = _perturb(backbones.create(BackboneConfig(**VIT), num_classes=2))
    model = adapters.apply(base, LoraAdapter(r=4, target_modules=["qkv"]))

    trainable, total = adapters.count_parameters(model)
    assert 0 < trainable / total < 0.1
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(_names_ok(n) for n in names), names
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)
    assert any("head" in n for n in names)
    assert set(names) <= set(adapters.trainable_state(model))

    qkv_before = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("qkv.base_layer.weight")}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    assert len(qkv_before) == len(base.blocks)
    snapshot = adapters.trainable_state(model)

    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = _x(1, 32, n=8), torch.tensor([0, 1] * 4)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    params = dict(model.named_parameters())
    for n, before in qkv_before.items():
        assert torch.equal(params[n], before), n
    changed = [n for n, before in lora_before.items() if not torch.equal(params[n], before)]
    assert any("lora_B" in n for n in changed) and any("lora_A" in n for n in changed)

    # finetune keeps trainable_state for the best epoch and puts it back with strict=False
    result = model.load_state_dict(snapshot, strict=False)
    assert not result.unexpected_keys
    for n, v in snapshot.items():
        assert torch.equal(dict(model.named_parameters())[n], v), n
    for _ in range(3):  # train again so the LoRA deltas are non-zero before merging
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    model.eval()
    with torch.no_grad():
        want = model(x)
    plain = tuning.merged(model)
    assert isinstance(plain, timm.models.vision_transformer.VisionTransformer)
    assert not any("lora" in n.lower() for n, _ in plain.named_modules())
    fresh = timm.create_model("test_vit", num_classes=2, in_chans=1, img_size=32, patch_size=8)
    assert list(plain.state_dict()) == list(fresh.state_dict())
    with torch.no_grad():
        got = plain(x)
        assert torch.allclose(got, want, atol=1e-5)
        # the merge is not a no-op: the untouched base weights give other outputs
        assert not torch.allclose(got, _perturb(backbones.create(BackboneConfig(**VIT), num_classes=2))(x),
                                  atol=1e-3)


@pytest.mark.parametrize("spec,head", [(VIT, "head."), (RESNET, "fc.")], ids=["test_vit", "test_resnet"])
def test_linear_adapter_trains_only_the_head(spec, head):
    model = adapters.apply(backbones.create(BackboneConfig(**spec), num_classes=3), LinearAdapter())
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names == [head + "weight", head + "bias"]
    trainable, total = adapters.count_parameters(model)
    assert trainable == 3 * model.num_features + 3 and total > 10 * trainable
    assert tuning.merged(model) is model


def test_lora_on_vit_tiny_trains_a_few_percent():
    """Acceptance: "LoRA trains only a few percent of the weights" (vit_tiny_patch16_224, r=8)."""
    cfg = BackboneConfig(name="vit_tiny_patch16_224", kwargs={"patch_size": 8}, img_size=64)
    model = adapters.apply(backbones.create(cfg, num_classes=2), LoraAdapter(r=8, target_modules=["qkv"]))
    trainable, total = adapters.count_parameters(model)
    # independent count: A (r x 192) and B (576 x r) per qkv in 12 blocks, plus the 2-class head
    assert trainable == 12 * (8 * 192 + 576 * 8) + (2 * 192 + 2)
    assert trainable / total < 0.03
    print(f"vit_tiny LoRA r=8: {trainable}/{total} = {trainable / total:.4%}")


# -- 8. normalisation ------------------------------------------------------------------------------

def test_normalization_from_timm_averaged_for_one_channel():
    gray = backbones.resolve(BackboneConfig(name="resnet18", in_chans=1)).normalization
    assert gray["mean"] == pytest.approx([(0.485 + 0.456 + 0.406) / 3])
    assert gray["std"] == pytest.approx([(0.229 + 0.224 + 0.225) / 3])
    rgb = backbones.resolve(BackboneConfig(name="resnet18", in_chans=3)).normalization
    assert rgb == {"mean": pytest.approx([0.485, 0.456, 0.406]), "std": pytest.approx([0.229, 0.224, 0.225])}


def test_normalization_from_model_json_wins(tmp_path):
    cfg = BackboneConfig(**VIT)
    own = {"mean": [0.123], "std": [0.321]}
    _save(backbones.create(cfg), cfg, tmp_path, norm=own)
    assert backbones.resolve(BackboneConfig(name="resnet18", checkpoint=str(tmp_path))).normalization == own
    # a weights file without model.json falls back to the architecture's timm statistics
    path = _raw(backbones.create(cfg), tmp_path / "bare.safetensors")
    assert backbones.resolve(BackboneConfig(name="resnet18", checkpoint=str(path))).normalization == \
        backbones.resolve(BackboneConfig(name="resnet18")).normalization


# -- 9. configuration mistakes become one-line errors ------------------------------------------------

def test_lora_targets_that_match_nothing_are_a_config_error():
    model = backbones.create(BackboneConfig(**RESNET), num_classes=2)
    with pytest.raises(ConfigError, match=r"adapter.target_modules \['qkv'\] match no module of test_resnet"):
        adapters.apply(model, LoraAdapter(target_modules=["qkv"]))


@pytest.mark.parametrize("kwargs, message", [({"img_size": 16}, "set backbone.img_size"),
                                             ({"no_such_arg": 1}, "do not fit test_vit")])
def test_bad_timm_kwargs_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        backbones.create(BackboneConfig(name="test_vit", kwargs=kwargs, img_size=32))


def test_one_channel_weights_expand_to_three(tmp_path):
    """A bare weights file (no model.json to insist on 1 channel) into a 3-channel model."""
    gray = _perturb(backbones.create(BackboneConfig(**VIT, in_chans=1)))
    save_file(gray.state_dict(), str(tmp_path / "gray.safetensors"))
    w = gray.state_dict()["patch_embed.proj.weight"]
    rgb = backbones.create(BackboneConfig(**VIT, in_chans=3, checkpoint=str(tmp_path / "gray.safetensors")))
    assert torch.allclose(rgb.state_dict()["patch_embed.proj.weight"], w.repeat(1, 3, 1, 1) / 3)


def test_a_torchvision_resnet_state_dict_loads_as_timm_resnet(tmp_path):
    """torchvision's ResNet layout is timm's: its .pth loads strictly and computes the same features."""
    torchvision = pytest.importorskip("torchvision")
    tv = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18_torchvision.pth"
    torch.save(tv.state_dict(), path)
    model = backbones.create(BackboneConfig(name="resnet18", in_chans=3, img_size=64, checkpoint=str(path))).eval()
    x = _x(3, 64)
    tv.fc = torch.nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x), rtol=1e-5, atol=1e-5)


# -- 10. layouts other projects write: DINOv2, MAE, LightlyTrain -----------------------------------

DINOV2 = dict(embed_dim=64, num_heads=2, depth=2)  # vit_small_patch14_dinov2's layout, made small


def _dinov2_original(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A timm DINOv2 ViT's weights written back into facebookresearch/dinov2's layout: position
    embeddings that include the class token's, a mask token, registers by their own name, no head."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    dim = state["cls_token"].shape[-1]
    if "reg_token" in state:  # timm folds the class position into cls_token; dinov2 keeps it apart
        state["register_tokens"] = state.pop("reg_token")
        state["pos_embed"] = torch.cat([torch.zeros(1, 1, dim), state["pos_embed"]], 1)
    state["mask_token"] = torch.zeros(1, dim)
    return state


@pytest.mark.parametrize("name", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2"])
def test_an_original_dinov2_checkpoint_loads_through_timms_converter(tmp_path, name):
    source = _perturb(timm.create_model(name, num_classes=0, **DINOV2))  # 518 px, as released
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(_dinov2_original(source), path)

    same = backbones.create(BackboneConfig(name=name, kwargs=DINOV2, in_chans=3, img_size=518,
                                           checkpoint=str(path))).eval()
    x = torch.randn(1, 3, 518, 518, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(same(x), source(x), rtol=1e-5, atol=1e-5)

    # at a medical image size the 37x37 position grid is resampled by timm, the blocks untouched
    small = backbones.create(BackboneConfig(name=name, kwargs=DINOV2, in_chans=1, img_size=56,
                                            checkpoint=str(path)))
    assert small.pos_embed.shape[1] == small.patch_embed.num_patches + (0 if "reg" in name else 1)
    torch.testing.assert_close(small.state_dict()["blocks.1.mlp.fc2.weight"], source.state_dict()["blocks.1.mlp.fc2.weight"])


def test_a_dinov2_training_checkpoint_keeps_the_backbone_and_drops_its_heads(tmp_path):
    source = _perturb(timm.create_model("vit_small_patch14_dinov2", num_classes=0, img_size=56, **DINOV2))
    teacher = {f"backbone.{k}": v for k, v in _dinov2_original(source).items()}
    teacher.update({"dino_head.mlp.0.weight": torch.zeros(8, 64), "ibot_head.last_layer.weight_g": torch.ones(8, 1)})
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": teacher, "iteration": 12}, path)
    loaded = backbones.create(BackboneConfig(name="vit_small_patch14_dinov2", kwargs=DINOV2, in_chans=3,
                                             img_size=56, checkpoint=str(path)))
    _assert_same_state(source, loaded)


def test_an_mae_training_checkpoint_loads_its_encoder(tmp_path):
    """MAE's main_pretrain.py saves {"model", "optimizer", "epoch", "scaler", "args"}: the encoder
    beside its decoder and mask token, and an argparse.Namespace that weights_only must allow."""
    import argparse

    kwargs = dict(embed_dim=64, num_heads=2, depth=2)
    encoder = _perturb(timm.create_model("vit_base_patch16_224", num_classes=0, **kwargs))
    model = {k: v.clone() for k, v in encoder.state_dict().items()}
    model.update({"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.zeros(32, 64),
                  "decoder_pos_embed": torch.zeros(1, 197, 32), "decoder_blocks.0.norm1.weight": torch.ones(32),
                  "decoder_pred.weight": torch.zeros(768, 32)})
    path = tmp_path / "checkpoint-799.pth"
    torch.save({"model": model, "optimizer": {"state": {}, "param_groups": []}, "epoch": 799,
                "args": argparse.Namespace(model="mae_vit_base_patch16", mask_ratio=0.75)}, path)

    same = backbones.create(BackboneConfig(name="vit_base_patch16_224", kwargs=kwargs, in_chans=3, img_size=224,
                                           checkpoint=str(path))).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(same(x), encoder(x), rtol=1e-5, atol=1e-5)
    small = backbones.create(BackboneConfig(name="vit_base_patch16_224", kwargs=kwargs, in_chans=1, img_size=64,
                                            checkpoint=str(path)))
    assert small.pos_embed.shape[1] == 1 + 16


def test_a_lightlytrain_export_loads_and_its_training_checkpoint_is_refused_with_the_way_out(tmp_path):
    """LightlyTrain writes exported_models/exported_last.pt as the timm model's own state dict;
    its checkpoints/last.ckpt pickles the training objects, which weights_only refuses."""
    source = _perturb(backbones.create(BackboneConfig(**RESNET, in_chans=3)))
    export = tmp_path / "out" / "exported_models" / "exported_last.pt"
    export.parent.mkdir(parents=True)
    torch.save(source.state_dict(), export)
    _assert_same_state(source, backbones.create(BackboneConfig(**RESNET, in_chans=3, checkpoint=str(export))))

    ckpt = tmp_path / "out" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": source.state_dict(), "hyper_parameters": Path("/data")}, ckpt)
    with pytest.raises(CheckpointError, match=r"cannot read weights .*last\.ckpt.*exported_models/exported_last\.pt"):
        backbones.create(BackboneConfig(**RESNET, in_chans=3, checkpoint=str(ckpt)))
