"""MoCo v3, BYOL, MAE and DINOv2-style: each trains through engine.fit and its loss falls, each
starts from the weights backbone.create loaded, masked methods refuse CNNs, EMA teachers with
BatchNorm follow the student's buffers. timm's tiny test models at 32 px, batch 8, on CPU."""
from __future__ import annotations


import pytest
import timm
import torch

from medalign import config, engine, ssl
from medalign.config import BackboneConfig
from medalign.errors import ConfigError
from medalign.models import backbones, checkpoint
from medalign.stages import _common as common

VIT = ["backbone.name=test_vit", "backbone.kwargs.patch_size=8", "backbone.img_size=32"]
RESNET = ["backbone.name=test_resnet", "backbone.img_size=32"]
SMALL = {  # heads sized for a 64-d test model
    "mocov3": ["method.hidden_dim=64", "method.out_dim=32"],
    "byol": ["method.hidden_dim=64", "method.out_dim=32"],
    "mae": ["method.decoder_dim=32", "method.decoder_depth=1", "method.decoder_heads=2"],
    "dinov2": ["method.out_dim=64", "method.hidden_dim=32", "method.bottleneck_dim=16", "method.n_local_crops=1"],
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: intra-op threads only add contention
    yield
    torch.set_num_threads(before)


def _cfg(method: str, arch: list[str], *extra: str, manifest="m.csv") -> config.PretrainConfig:
    return config.load(config.PretrainConfig, None, [f"data.manifest={manifest}", f"method.name={method}", *arch,
                                                     *SMALL[method], *extra])


def _build(cfg):
    torch.manual_seed(0)
    return ssl.build(cfg.method, cfg, backbones.resolve(cfg.backbone))


# (method, backbone, learning rate, epochs, overrides): 2 steps per epoch on the 20 demo images.
# Contrast on 20 near-identical phantoms at batch 8 is noisy: MoCo v3 gets weak augmentation and
# 50 steps to show its fall; DINO-like losses fall, then wander as the centre settles: 8 steps.
WEAK = ["augment.crop_scale=[0.8,1.0]", "augment.blur_p=0", "augment.noise_p=0", "augment.brightness_contrast=0.1"]
RUNS = [("mocov3", RESNET, "1e-3", 25, WEAK), ("byol", RESNET, "2e-3", 6, []), ("mae", VIT, "2e-3", 6, []),
        ("dinov2", VIT, "1e-3", 4, [])]


def fit(cfg: config.PretrainConfig, out) -> tuple[torch.nn.Module, list[dict]]:
    """What the pretrain stage does, up to the checkpoint: build, then engine.fit."""
    rt = engine.Runtime(torch.device("cpu"), seed=cfg.seed)
    bb = backbones.resolve(cfg.backbone)
    torch.manual_seed(cfg.seed)
    objective, views = ssl.build(cfg.method, cfg, bb)
    manifest, rows, _ = common.rows(cfg.data, cfg.data.splits)
    data = common.dataset(manifest, rows, cfg.data, cfg.data.intensity, views.reseed(cfg.seed), bb)
    history = engine.fit(objective, engine.loader(data, cfg.data.batch_size, rt, train=True), cfg.optim, rt, out,
                         "test")
    return objective, history


@pytest.mark.parametrize("method,arch,lr,epochs,extra", RUNS, ids=[r[0] for r in RUNS])
def test_trains_through_engine_fit_and_the_loss_falls(demo_set, tmp_path, method, arch, lr, epochs, extra):
    cfg = _cfg(method, arch, "data.batch_size=8", f"optim.lr={lr}", f"optim.epochs={epochs}", "optim.warmup_epochs=1",
               "optim.weight_decay=0", *extra, manifest=demo_set)
    objective, history = fit(cfg, tmp_path)
    assert len(history) == epochs and all(h["embedding_std"] > 0 for h in history)
    losses = [h["loss"] for h in history]
    assert sum(losses[-2:]) < sum(losses[:2]), [round(x, 4) for x in losses]  # last two epochs vs first two
    want = timm.create_model(cfg.backbone.name, **cfg.backbone.kwargs, in_chans=1, num_classes=0,
                             **({"img_size": 32} if "vit" in cfg.backbone.name else {})).state_dict()
    assert set(objective.backbone().state_dict()) == set(want)  # what pretrain saves: timm layout, no heads


@pytest.mark.parametrize("method", list(SMALL))
def test_starts_from_the_checkpoint_without_reinitialising(tmp_path, method):
    spec = BackboneConfig(name="test_vit", kwargs={"patch_size": 8}, img_size=32)
    model = backbones.create(spec)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():  # away from any initialisation, pos_embed included
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    bb = backbones.resolve(spec)
    folder = checkpoint.save(tmp_path / "ck", model.state_dict(),
                             checkpoint.metadata(bb.arch, 32, bb.normalization, num_classes=0))
    objective, _ = _build(_cfg(method, ["backbone.img_size=32"], f"backbone.checkpoint={folder}"))
    want = model.state_dict()
    for net in {id(n): n for n in [objective.backbone(), *_online(objective)]}.values():
        got = net.state_dict()
        assert set(got) == set(want)
        for k in want:
            assert torch.equal(got[k], want[k]), k


def _online(objective):
    for name in ("encoder", "student", "momentum_encoder", "teacher"):
        net = getattr(objective, name, None)
        if net is not None:
            yield getattr(net, "vit", net)


@pytest.mark.parametrize("method", ["mae", "dinov2"])
def test_masked_methods_refuse_a_cnn_in_one_line(method):
    with pytest.raises(ConfigError) as e:
        _build(_cfg(method, RESNET))
    message = str(e.value)
    assert "\n" not in message and f"method {method}" in message and "test_resnet" in message


@pytest.mark.parametrize("method", ["mocov3", "byol"])
def test_the_momentum_encoders_batchnorm_buffers_follow_the_student(method):
    objective, _ = _build(_cfg(method, RESNET))
    objective.train()
    start = {k: v.clone() for k, v in objective.momentum_encoder.state_dict().items()}
    with torch.no_grad():  # the student's running statistics move; lightly's update_momentum skips buffers
        objective.encoder(torch.randn(8, 1, 32, 32) * 3 + 2)
        objective.projector(torch.randn(8, objective.encoder.num_features) + 1)
        for p in objective.encoder.parameters():
            p.add_(1.0)
    objective.after_optimizer_step(0, 10)
    for student, teacher in [(objective.encoder, objective.momentum_encoder),
                             (objective.projector, objective.momentum_projector)]:
        buffers = dict(student.named_buffers())
        assert any("running_mean" in k for k in buffers)
        for k, b in teacher.named_buffers():
            assert torch.equal(b, buffers[k]), k
    m = objective.cfg.momentum
    k = next(k for k, v in start.items() if v.is_floating_point() and "running" not in k)
    torch.testing.assert_close(objective.momentum_encoder.state_dict()[k], m * start[k] + (1 - m) * (start[k] + 1.0))
    assert objective.backbone() is objective.encoder
