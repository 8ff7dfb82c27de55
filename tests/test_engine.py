"""engine.fit: schedule, parameter groups, accumulation, several loaders, hooks, resume, preemption."""
import json
import math
import os
import signal

import pytest
import timm
import torch
from torch import nn
from torch.utils.data import TensorDataset

from medalign import config, engine
from medalign.errors import MedalignError, Preempted


def _rt(**kw):
    return engine.Runtime(torch.device("cpu"), **kw)


def _optim(**kw):
    return config.OptimConfig(**{"lr": 0.05, "weight_decay": 0.0, "epochs": 3, "warmup_epochs": 0, **kw})


class Regression(nn.Module):
    """A linear model on a fixed dataset: every step is deterministic, so runs compare exactly."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.calls = {"after_backward": 0, "after_optimizer_step": 0, "on_epoch_end": 0}

    def forward(self, batch):
        x, y = batch
        return {"loss": ((self.net(x).squeeze(1) - y) ** 2).mean()}

    def after_backward(self, epoch):
        assert all(p.grad is not None for p in self.parameters())
        self.calls["after_backward"] += 1

    def after_optimizer_step(self, step, total):
        self.calls["after_optimizer_step"] += 1

    def on_epoch_end(self, epoch):
        self.calls["on_epoch_end"] += 1
        return {"weight_norm": float(self.net[0].weight.detach().norm())}


def _data(n=32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x.sum(1))


def _fit(tmp_path, rt=None, objective=None, batch_size=8, **optim):
    rt = rt or _rt()
    objective = objective or Regression()
    tmp_path.mkdir(parents=True, exist_ok=True)
    history = engine.fit(objective, engine.loader(_data(), batch_size, rt, train=True), _optim(**optim), rt,
                         tmp_path, "test")
    return objective, history


def _steps(folder):
    return [json.loads(x) for x in (folder / "log.jsonl").read_text().splitlines() if '"summary"' not in x]


def test_lr_warms_up_linearly_then_decays_by_cosine_to_zero():
    assert [engine.lr_at(s, 10, 1.0, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert engine.lr_at(4, 10, 1.0, 4) == pytest.approx(1.0)
    assert engine.lr_at(7, 10, 1.0, 4) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert engine.lr_at(10, 10, 1.0, 4) == pytest.approx(0.0)
    assert engine.lr_at(0, 10, 1.0, 0) == pytest.approx(1.0)


def test_hooks_run_once_per_step_and_epoch_and_epoch_scalars_are_logged(tmp_path):
    objective, history = _fit(tmp_path)
    assert objective.calls == {"after_backward": 12, "after_optimizer_step": 12, "on_epoch_end": 3}
    assert [h["epoch"] for h in history] == [0, 1, 2] and all("weight_norm" in h for h in history)
    assert [s["step"] for s in _steps(tmp_path)] == list(range(1, 13))
    assert history[-1]["loss"] < history[0]["loss"]
    assert not (tmp_path / "resume").exists()  # finished: resume state is gone


def test_non_finite_loss_is_an_error_naming_the_step(tmp_path):
    class Diverges(Regression):
        def forward(self, batch):
            return {"loss": super().forward(batch)["loss"] * float("nan")}

    with pytest.raises(MedalignError, match="loss is nan at step 0"):
        _fit(tmp_path, objective=Diverges())


def test_accumulation_equals_one_big_batch(tmp_path):
    big, _ = _fit(tmp_path / "a", batch_size=8)
    small, _ = _fit(tmp_path / "b", batch_size=4, accumulate=2)
    for p, q in zip(big.parameters(), small.parameters()):
        # same sample order: the sampler is a function of (seed, epoch), batches of 4 pair up into 8
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert len(_steps(tmp_path / "b")) == len(_steps(tmp_path / "a")) == 12


def test_several_loaders_are_zipped_and_the_first_sets_the_epoch(tmp_path):
    seen = []

    class Both(Regression):
        def forward(self, batch):
            seen.append((batch["labeled"][0].shape[0], batch["unlabeled"][0].shape[0]))
            return super().forward(batch["labeled"])

    rt = _rt()
    loaders = {"labeled": engine.loader(_data(16), 8, rt, train=True),  # 2 batches: cycles
               "unlabeled": engine.loader(_data(48), 12, rt, train=True, seed_offset=1)}
    engine.fit(Both(), loaders, _optim(epochs=2), rt, tmp_path, "test")
    assert seen == [(8, 12)] * 4


def test_weight_decay_skips_biases_norms_and_vit_tokens():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=2)

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.head = model, nn.Linear(4, 4)

    wrapped = Wrap()
    groups = engine.param_groups(wrapped, config.OptimConfig(weight_decay=0.05))
    names = {id(p): n for n, p in wrapped.named_parameters()}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {"model.pos_embed", "model.cls_token", "model.norm.weight", "model.blocks.0.attn.qkv.bias",
            "head.bias"} <= plain
    assert {"model.blocks.0.attn.qkv.weight", "model.patch_embed.proj.weight", "head.weight"} <= decayed
    assert decayed | plain == set(names.values()) and not decayed & plain

    layered = engine.param_groups(wrapped, config.OptimConfig(weight_decay=0.05, layer_decay=0.5))
    scale = {names[id(p)]: g.get("lr_scale", 1.0) for g in layered for p in g["params"]}
    assert scale["model.head.weight"] == 1.0
    assert scale["model.blocks.1.mlp.fc1.weight"] == 0.5 and scale["model.blocks.0.mlp.fc1.weight"] == 0.25
    assert scale["model.patch_embed.proj.weight"] == 0.125


class Interrupt(Exception):
    pass


def test_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    reference, _ = _fit(tmp_path / "whole")

    class Crashes(Regression):
        def after_optimizer_step(self, step, total):
            if step == 6:  # after the checkpoint at step 4 (0-based step 6 is the 7th)
                raise Interrupt

    rt = _rt(checkpoint_every_steps=4)
    with pytest.raises(Interrupt):
        _fit(tmp_path / "cut", rt=rt, objective=Crashes())
    progress = json.loads((tmp_path / "cut" / "resume" / "progress.json").read_text())
    assert progress["step"] == 4 and progress["total_steps"] == 12

    resumed, history = _fit(tmp_path / "cut", rt=rt)
    for p, q in zip(reference.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert [s["step"] for s in _steps(tmp_path / "cut")] == list(range(1, 13))
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert resumed.calls["after_optimizer_step"] == 8  # only the steps after the checkpoint


def test_sigusr1_checkpoints_at_the_next_step_and_the_rerun_finishes(tmp_path):
    reference, _ = _fit(tmp_path / "whole")

    class Signalled(Regression):
        def after_optimizer_step(self, step, total):
            if step == 2:
                os.kill(os.getpid(), signal.SIGUSR1)

    with pytest.raises(Preempted, match="SIGUSR1 at step 3 of 12") as e:
        _fit(tmp_path / "cut", objective=Signalled())
    assert e.value.exit_code == 75
    assert json.loads((tmp_path / "cut" / "resume" / "progress.json").read_text())["step"] == 3
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the handler is put back

    resumed, _ = _fit(tmp_path / "cut")
    for p, q in zip(reference.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


class Conv(nn.Module):
    """A convolution with two input channels, so NCHW and NHWC are different layouts of its weight."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 4, 3)

    def forward(self, batch):
        x, y = batch
        return {"loss": ((self.conv(x).mean((1, 2, 3)) - y) ** 2).mean()}


def test_channels_last_trains_the_same_model_in_nhwc_layout(tmp_path):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 2, 8, 8, generator=g)
    data = TensorDataset(x, x.mean((1, 2, 3)) * 3)
    runs = {}
    for layout in (False, True):
        rt = _rt(channels_last=layout)
        (tmp_path / str(layout)).mkdir()
        objective = Conv()
        history = engine.fit(objective, engine.loader(data, 4, rt, train=True), _optim(), rt, tmp_path / str(layout), "t")
        runs[layout] = objective.conv.weight.detach(), [h["loss"] for h in history]
    (w_nchw, loss_nchw), (w_nhwc, loss_nhwc) = runs[False], runs[True]
    assert w_nhwc.is_contiguous(memory_format=torch.channels_last) and not w_nhwc.is_contiguous()
    assert w_nchw.is_contiguous()
    assert loss_nhwc == pytest.approx(loss_nchw, rel=1e-4) and loss_nchw[-1] < loss_nchw[0]
    torch.testing.assert_close(w_nhwc, w_nchw, rtol=1e-4, atol=1e-5)
