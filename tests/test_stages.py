"""The training stages as recipes: what finetune keeps and freezes, what pretrain saves and records."""
from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

from medalign import config
from medalign.config import BackboneConfig
from medalign.errors import CheckpointError, ConfigError, DataError
from medalign.metrics.classification import classification_metrics
from medalign.models import adapters, backbones, checkpoint, classifier

RESNET = dict(name="test_resnet", img_size=32)


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(stage: str, out, *overrides: str) -> dict:
    s = config.STAGES[stage]
    cfg = config.load(s.config, None, ["runtime.device=cpu", *overrides])
    out.mkdir(parents=True)
    return s.run(cfg, out)


@pytest.fixture
def start(tmp_path):
    """A test_resnet checkpoint whose BatchNorm statistics are not their initial 0 and 1 (a train-mode
    forward would move them), yet leave it features: a mean far above 0 would silence every ReLU."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", in_chans=1, num_classes=0)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if "running_mean" in name:
                buf.uniform_(-0.1, 0.1)
            elif "running_var" in name:
                buf.uniform_(0.5, 2.0)
    cfg = BackboneConfig(**RESNET)
    bb = backbones.resolve(cfg)
    return checkpoint.save(tmp_path / "start", model.state_dict(),
                           checkpoint.metadata(bb.arch, 32, bb.normalization, num_classes=0))


def test_best_epoch_state_keeps_batchnorm_statistics():
    model = adapters.apply(timm.create_model("test_resnet", in_chans=1, num_classes=2), config.FullAdapter())
    best = adapters.trainable_state(model)
    assert "bn1.running_mean" in best and "bn1.num_batches_tracked" in best
    model.train()
    model(torch.randn(4, 1, 32, 32) * 3 + 2)  # a train-mode forward moves the running statistics
    assert not torch.equal(model.bn1.running_mean, best["bn1.running_mean"])
    model.load_state_dict(best, strict=False)
    assert torch.equal(model.bn1.running_mean, best["bn1.running_mean"])


@pytest.mark.parametrize("augment", ["true", "false"])
def test_linear_probe_leaves_the_backbone_bit_identical(demo_set, start, tmp_path, augment):
    """augment=true trains through the image path, false on features computed once."""
    out = tmp_path / "ft"
    metrics = _run("finetune", out, f"data.manifest={demo_set}", f"backbone.checkpoint={start}",
                   "adapter.name=linear", "backbone.img_size=32", f"augment.enabled={augment}",
                   "data.batch_size=4", "optim.epochs=2", "optim.lr=0.05")
    before = load_file(str(start / "model.safetensors"))
    # saved: the head and the buffers over the start's file, which model.json names by sha256
    adapter = load_file(str(out / "model" / "adapter.safetensors"))
    assert {k for k in adapter if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))} \
        == {"fc.weight", "fc.bias"}
    after = classifier.load(out)[0].state_dict()
    assert set(after) == set(before) | {"fc.weight", "fc.bias"}
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []
    untrained = tmp_path / "untrained"  # the same run at a learning rate that moves nothing
    _run("finetune", untrained, f"data.manifest={demo_set}", f"backbone.checkpoint={start}", "adapter.name=linear",
         "backbone.img_size=32", f"augment.enabled={augment}", "data.batch_size=4", "optim.epochs=2",
         "optim.lr=1e-12")
    head_start = load_file(str(untrained / "model" / "adapter.safetensors"))["fc.weight"]
    assert (after["fc.weight"] - head_start).abs().max() > 0.01  # the head did train
    assert metrics["trainable_params"] == after["fc.weight"].numel() + after["fc.bias"].numel()


def test_full_finetune_saves_the_best_epoch_whole(demo_set, start, tmp_path):
    """The saved model must be one that existed: the best epoch's weights *and* BN statistics."""
    out = tmp_path / "ft"
    metrics = _run("finetune", out, f"data.manifest={demo_set}", f"backbone.checkpoint={start}",
                   "adapter.name=full", "backbone.img_size=32", "data.batch_size=4", "optim.epochs=3")
    saved_model, _, _ = classifier.load(out)
    from medalign.stages import _common as common
    from medalign import engine
    bb = backbones.resolve(BackboneConfig(checkpoint=str(out), img_size=32))
    cfg = config.load(config.FinetuneConfig, None, [f"data.manifest={demo_set}"])
    manifest, rows, _ = common.rows(cfg.data, "val")
    rt = engine.Runtime(torch.device("cpu"))
    ds = common.dataset(manifest, rows, cfg.data, cfg.data.intensity, common.eval_transform(bb, cfg.data.intensity),
                        bb, metrics["classes"])
    inference = common.loader(ds, cfg.data.model_copy(update={"batch_size": 4}), cfg, rt, train=False)
    assert inference.batch_size == engine.INFERENCE_BATCH  # inference batches more than training's 4
    probs, targets = engine.predict(saved_model, inference, rt)
    again = classification_metrics(targets, probs, metrics["classes"])
    assert again["auroc"] == pytest.approx(metrics["val"]["auroc"])
    assert again["accuracy"] == pytest.approx(metrics["val"]["accuracy"])
    # ... and the batch changes no prediction
    by_four, _ = engine.predict(saved_model, engine.loader(ds, 4, rt, train=False), rt)
    np.testing.assert_allclose(by_four, probs, atol=1e-5)


def test_recorded_config_names_the_architecture_that_was_built(demo_set, start, tmp_path):
    out = tmp_path / "ft"
    _run("finetune", out, f"data.manifest={demo_set}", f"backbone.checkpoint={start}", "adapter.name=linear",
         "backbone.img_size=32", "augment.enabled=false", "data.batch_size=4", "optim.epochs=1")
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["backbone"]["name"] == "test_resnet"  # not the config's default vit_tiny_patch16_224
    meta = json.loads((out / "model" / "model.json").read_text())
    assert meta["config_hash"] == config.digest(config.semantic(config.load(
        config.FinetuneConfig, None, ["runtime.device=cpu", f"data.manifest={demo_set}", f"backbone.checkpoint={start}",
                                      "adapter.name=linear", "backbone.img_size=32", "augment.enabled=false",
                                      "data.batch_size=4", "optim.epochs=1"])))


def test_subset_trains_on_the_marked_train_rows_only(demo_set, start, tmp_path):
    rows = list(csv.DictReader(demo_set.open()))
    train = [r for r in rows if r["split"] == "train"]
    marked = {r["path"] for r in train[::3]} | {next(r["path"] for r in train if r["label"] != train[0]["label"])}
    with demo_set.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*rows[0], "fewshot_k2_s0"])
        w.writeheader()
        w.writerows({**r, "fewshot_k2_s0": int(r["path"] in marked)} for r in rows)
    common = [f"data.manifest={demo_set}", f"backbone.checkpoint={start}", "adapter.name=linear",
              "backbone.img_size=32", "augment.enabled=false", "data.batch_size=2", "optim.epochs=1"]
    metrics = _run("finetune", tmp_path / "a", *common, "data.subset=fewshot_k2_s0")
    assert metrics["train_images"] == len(marked) < len(train)
    with pytest.raises(DataError, match="no column 'fewshot_k9_s0' .*fewshot_k2_s0"):
        _run("finetune", tmp_path / "b", *common, "data.subset=fewshot_k9_s0")


PRETRAIN = ["backbone.name=test_resnet", "backbone.img_size=32", "method.name=simclr", "data.batch_size=8",
            "optim.epochs=1"]


def test_pretrain_on_held_out_rows_warns_and_strict_refuses(demo_set, tmp_path, caplog):
    with pytest.raises(ConfigError, match=r"\['test'\] are held-out splits"):
        _run("pretrain", tmp_path / "a", f"data.manifest={demo_set}", *PRETRAIN, "data.splits=[train,test]",
             "data.strict=true")
    with caplog.at_level(logging.WARNING):
        _run("pretrain", tmp_path / "b", f"data.manifest={demo_set}", *PRETRAIN, "data.splits=[train,test]")
    assert "held-out split(s) ['test']" in caplog.text


def test_dino_saves_the_ema_teacher_which_trails_the_student(demo_set, tmp_path):
    from medalign import ssl
    cfg = config.load(config.PretrainConfig, None, [
        f"data.manifest={demo_set}", "backbone.name=test_vit", "backbone.kwargs.patch_size=8", "backbone.img_size=32",
        "method.out_dim=32", "method.hidden_dim=16", "method.bottleneck_dim=8", "method.n_local_crops=1"])
    objective, _ = ssl.build(cfg.method, cfg, backbones.resolve(cfg.backbone))
    start = {k: v.clone() for k, v in objective.teacher.state_dict().items()}
    with torch.no_grad():
        for p in objective.student.parameters():
            p.add_(1.0)
    objective.after_optimizer_step(0, 10)
    m = cfg.method.teacher_momentum
    k = "blocks.0.attn.qkv.weight"
    torch.testing.assert_close(objective.teacher.state_dict()[k], m * start[k] + (1 - m) * (start[k] + 1.0))
    assert objective.backbone() is objective.teacher

    out = tmp_path / "pre"
    _run("pretrain", out, f"data.manifest={demo_set}", "backbone.name=test_vit", "backbone.kwargs.patch_size=8",
         "backbone.img_size=32", "method.out_dim=32", "method.hidden_dim=16", "method.bottleneck_dim=8",
         "method.n_local_crops=1", "data.batch_size=8", "optim.epochs=1")
    saved = load_file(str(out / "checkpoint" / "model.safetensors"))
    assert not any(k.startswith(("student", "teacher", "head")) for k in saved)  # plain timm layout
    assert set(saved) == set(timm.create_model("test_vit", patch_size=8, img_size=32, in_chans=1,
                                               num_classes=0).state_dict())


def test_classification_metrics_on_known_scores():
    targets = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[.8, .1, .1], [.2, .7, .1], [.1, .8, .1], [.3, .6, .1], [.1, .1, .8], [.5, .1, .4]])
    m = classification_metrics(targets, probs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    # rows are the truth, columns the prediction: one a predicted as b, one c predicted as a
    assert m["confusion_matrix"]["rows_true_cols_pred"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["support"] == {"a": 2, "b": 2, "c": 2}
    from sklearn.metrics import roc_auc_score
    assert m["auroc"] == pytest.approx(roc_auc_score(targets, probs, multi_class="ovr"))
    binary = classification_metrics(np.array([0, 1, 1, 0]), np.array([[.9, .1], [.2, .8], [.6, .4], [.4, .6]]), ["n", "p"])
    assert binary["auroc"] == pytest.approx(0.75) and binary["balanced_accuracy"] == pytest.approx(0.5)
    single = classification_metrics(np.array([1, 1]), np.array([[.3, .7], [.6, .4]]), ["n", "p"])
    assert single["auroc"] is None


def test_evaluate_writes_one_prediction_per_row_with_its_probabilities(demo_set, start, tmp_path):
    _run("finetune", tmp_path / "ft", f"data.manifest={demo_set}", f"backbone.checkpoint={start}",
         "adapter.name=linear", "backbone.img_size=32", "augment.enabled=false", "data.batch_size=4", "optim.epochs=1")
    metrics = _run("evaluate", tmp_path / "ev", f"model={tmp_path / 'ft'}", f"data.manifest={demo_set}")
    preds = list(csv.DictReader((tmp_path / "ev" / "predictions.csv").open()))
    test_rows = [r for r in csv.DictReader(demo_set.open()) if r["split"] == "test"]
    assert [p["path"] for p in preds] == [r["path"] for r in test_rows]
    assert [p["label"] for p in preds] == [r["label"] for r in test_rows]
    assert list(preds[0]) == ["path", "label", "prediction", "p_lesion", "p_normal"]
    for p in preds:
        probs = {c: float(p[f"p_{c}"]) for c in ("lesion", "normal")}
        assert sum(probs.values()) == pytest.approx(1, abs=1e-5)
        assert p["prediction"] == max(probs, key=probs.get)
    right = sum(p["prediction"] == p["label"] for p in preds)
    assert metrics["accuracy"] == pytest.approx(right / len(preds))


def test_a_head_trained_for_the_same_classes_is_kept_a_foreign_one_starts_near_zero(demo_set, start, tmp_path):
    args = [f"data.manifest={demo_set}", "adapter.name=linear", "backbone.img_size=32", "augment.enabled=false",
            "data.batch_size=4", "optim.epochs=1"]
    _run("finetune", tmp_path / "a", *args, f"backbone.checkpoint={start}", "optim.lr=0.05")
    first = load_file(str(tmp_path / "a" / "model" / "adapter.safetensors"))["fc.weight"]
    with pytest.raises(CheckpointError, match="holds an adapter over its base weights.*export merge"):
        _run("finetune", tmp_path / "refused", *args, f"backbone.checkpoint={tmp_path / 'a'}")
    classifier.merge(tmp_path / "a", tmp_path / "merged")
    _run("finetune", tmp_path / "b", *args, f"backbone.checkpoint={tmp_path / 'merged'}", "optim.lr=1e-12")
    again = load_file(str(tmp_path / "b" / "model" / "adapter.safetensors"))["fc.weight"]
    torch.testing.assert_close(again, first)  # continued, not replaced
    _run("finetune", tmp_path / "c", *args, f"backbone.checkpoint={start}", "optim.lr=1e-12")
    fresh = load_file(str(tmp_path / "c" / "model" / "adapter.safetensors"))["fc.weight"]
    assert fresh.std() < 0.02 and (fresh - first).abs().max() > 1e-3  # the near-zero start, untrained


@pytest.mark.parametrize("backbone", [["backbone.name=test_resnet"], ["backbone.name=test_vit", "backbone.kwargs.patch_size=8"]])
def test_dino_asks_the_model_whether_it_takes_the_local_crop_size(demo_set, backbone):
    """A CNN takes any size; a ViT gets timm's dynamic_img_size: both train on 32 and 16 px crops."""
    from medalign import ssl
    cfg = config.load(config.PretrainConfig, None, [f"data.manifest={demo_set}", *backbone, "backbone.img_size=32",
                                                    "method.out_dim=16", "method.hidden_dim=8",
                                                    "method.bottleneck_dim=4", "method.n_local_crops=1"])
    objective, views = ssl.build(cfg.method, cfg, backbones.resolve(cfg.backbone))
    images = [views(np.random.rand(40, 40, 1).astype("float32")) for _ in range(2)]
    assert [c.shape[-1] for c in images[0]] == [32, 32, 16]
    out = objective(([torch.stack(v) for v in zip(*images)], None))
    assert torch.isfinite(out["loss"])


@pytest.mark.parametrize("preset", ["xray", "ultrasound", "ct", "mr"])
def test_augment_presets_keep_one_channel_and_differ_where_they_should(preset):
    from medalign.data.transforms import train_view
    aug = config.AugmentConfig(preset=preset, crop_scale=(1.0, 1.0), brightness_contrast=0.0, blur_p=0.0,
                               noise_p=0.0)
    view = train_view(32, aug, [0.5], [0.5])
    view.set_random_seed(0)
    image = np.zeros((32, 32, 1), dtype="float32")
    image[:8] = 1.0  # a bright band at the top: a vertical flip moves it to the bottom
    outs = [view(image=image)["image"] for _ in range(20)]
    assert all(o.shape == (1, 32, 32) for o in outs)
    flipped = any(o[0, -4:].mean() > o[0, :4].mean() for o in outs)
    assert flipped == (preset == "ultrasound")
    names = [type(t).__name__ for t in view.transforms]
    assert ("Affine" in names) == (preset in ("ct", "mr")) and ("RandomGamma" in names) == (preset == "mr")


def test_pretrain_monitor_logs_knn_each_epoch_and_warns_on_collapse(demo_set, tmp_path, caplog):
    out = tmp_path / "pre"
    with caplog.at_level(logging.WARNING):
        metrics = _run("pretrain", out, f"data.manifest={demo_set}", *PRETRAIN, "optim.epochs=2",
                       f"monitor.manifest={demo_set}", "monitor.k=3", "monitor.collapse_below=1000")
    summaries = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"summary"' in x]
    assert [s["epoch"] for s in summaries] == [0, 1]
    assert all(0 <= s["knn_auroc"] <= 1 and 0 <= s["knn_accuracy"] <= 1 for s in summaries)
    # a threshold no network meets: every epoch is reported, in metrics and as a warning
    assert metrics["collapsed_epochs"] == [0, 1] and "features are collapsing" in caplog.text
