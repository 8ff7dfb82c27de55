"""finetune: adapter-based fine-tuning on the labeled split; keeps the epoch with the best validation AUROC."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from medalign import config, engine
from medalign.data.datasets import class_names, write_skipped
from medalign.data.manifest import check_no_leak
from medalign.metrics.classification import classification_metrics
from medalign.models import adapters, backbones, checkpoint, tuning
from medalign.models.backbones import head_names
from medalign.stages import _common as common


class Classifier(nn.Module):
    """Cross-entropy on `model`; validates after every epoch and keeps the best epoch's state.

    What the adapter froze stays in eval mode while the rest trains.
    """

    def __init__(self, model: nn.Module, validate: Callable[[nn.Module], dict]):
        super().__init__()
        self.model, self.validate = model, validate
        self.frozen = adapters.frozen_modules(model)  # a plain list: the modules are registered via model
        self.best: dict = {}

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        for m in self.frozen:
            m.eval()
        return self

    def forward(self, batch):
        x, y = batch
        return {"loss": F.cross_entropy(self.model(x), y)}

    def on_epoch_end(self, epoch: int) -> dict:
        m = self.validate(self.model)
        score = m["auroc"] if m["auroc"] is not None else m["balanced_accuracy"]
        if not self.best or score > self.best["score"]:
            self.best = {"score": score, "epoch": epoch, "metrics": m, "state": adapters.trainable_state(self.model)}
        return {"val_auroc": m["auroc"], "val_accuracy": m["accuracy"]}

    def resume_state(self) -> dict:
        return {"best": self.best}

    def load_resume_state(self, state: dict) -> None:
        self.best = state["best"]


def run(cfg: config.FinetuneConfig, out_dir: Path) -> dict:
    rt = engine.setup(cfg.runtime, cfg.seed)
    manifest, train_rows, skipped = common.rows(cfg.data, cfg.data.train_split, cfg.data.subset)
    _, val_rows, skipped_val = common.rows(cfg.data, cfg.data.val_split)
    check_no_leak(manifest)
    classes = class_names(manifest, train_rows)
    bb = backbones.resolve(cfg.backbone)
    common.record_built(out_dir, cfg, bb, rt)
    model = bb.create(num_classes=len(classes))
    if not (bb.meta and bb.meta.get("classes") == classes):  # a head trained for exactly these classes stays
        for h in head_names(model):
            _small_init(model.get_submodule(h))
    model = adapters.apply(model, cfg.adapter, cfg.seed)
    trainable, total = adapters.count_parameters(model)

    def data(rows: list[dict], transform):
        return common.dataset(manifest, rows, cfg.data, cfg.data.intensity, transform, bb, classes)

    evaluation = common.eval_transform(bb, cfg.data.intensity)
    val = common.loader(data(val_rows, evaluation), cfg.data, cfg, rt, train=False)
    heads = head_names(model)
    # a frozen backbone without augmentation sees each image the same way every epoch:
    # compute its features once and train the head on them
    on_features = cfg.adapter.name == "linear" and not cfg.augment.enabled and len(heads) == 1
    if on_features:
        features = common.features(model, common.loader(data(train_rows, evaluation), cfg.data, cfg, rt, train=False), rt)
        val = DataLoader(common.features(model, val, rt), batch_size=cfg.data.batch_size)
        head = model.get_submodule(heads[0])
        train_data = engine.loader(features, cfg.data.batch_size, rt, train=True)
        objective = Classifier(head, lambda m: _validate(m, val, rt, classes))
    else:
        augment = common.train_transform(bb, cfg.augment, cfg.data.intensity, cfg.seed + rt.rank)
        train_data = common.loader(data(train_rows, augment), cfg.data, cfg, rt, train=True)
        objective = Classifier(model, lambda m: _validate(m, val, rt, classes))

    engine.fit(objective, train_data, cfg.optim, rt, out_dir, "finetune")
    best = objective.best
    objective.model.load_state_dict(best["state"], strict=False)
    if rt.is_main:
        meta = common.metadata(bb, cfg, out_dir, num_classes=len(classes), classes=classes,
                               adapter=cfg.adapter.model_dump())
        checkpoint.save(out_dir / "model", tuning.merged(model).state_dict(), meta)
    n_skipped = len(skipped) + len(skipped_val)
    return {"classes": classes, "train_images": len(train_rows),
            "skipped_rows": write_skipped(out_dir, skipped + skipped_val) if rt.is_main else n_skipped,
            "best_epoch": best["epoch"], "val": best["metrics"], "trainable_params": trainable,
            "total_params": total, "trainable_fraction": trainable / total, "model": "model"}


def _small_init(head: nn.Module) -> None:
    """A new head starts near zero, as MAE's and DINO's probes do: timm's from-scratch init (0.7 wide
    for EfficientNet) on frozen 1280-d features gives logits in the tens and a first epoch of noise."""
    if isinstance(head, nn.Linear):
        nn.init.trunc_normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)


def _validate(model: nn.Module, val: DataLoader, rt: engine.Runtime, classes: list[str]) -> dict:
    probs, targets = engine.predict(model, val, rt)
    return classification_metrics(targets, probs, classes)
