"""finetune: adapter-based fine-tuning on the labeled split; keeps the epoch with the best validation AUROC."""
from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torch import nn

from medalign import config, engine
from medalign.data.datasets import ImageDataset, class_names, load_rows, write_skipped
from medalign.data.manifest import check_no_leak, fingerprint
from medalign.data.transforms import Single, eval_view, train_view
from medalign.metrics.classification import classification_metrics
from medalign.models import adapters, backbones, checkpoint


class Classifier(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        x, y = batch
        return {"loss": F.cross_entropy(self.model(x), y)}


def run(cfg: config.FinetuneConfig, out_dir: Path) -> dict:
    rt = engine.setup(cfg.runtime, cfg.seed)
    manifest, train_rows, skipped = load_rows(cfg.data.manifest, cfg.data.train_split, cfg.data.on_error)
    _, val_rows, skipped_val = load_rows(cfg.data.manifest, cfg.data.val_split, cfg.data.on_error)
    check_no_leak(manifest)
    classes = class_names(manifest, train_rows)
    arch, norm = backbones.architecture(cfg.backbone), backbones.normalization(cfg.backbone)
    size, chans = cfg.backbone.img_size, arch["in_chans"]

    model = adapters.apply(backbones.create(cfg.backbone, num_classes=len(classes)), cfg.adapter)
    trainable, total = adapters.count_parameters(model)
    z = cfg.data.intensity.zscore
    augment = Single(train_view(size, cfg.augment, **norm, zscore=z)).reseed(cfg.seed + rt.rank)
    reader, cache_size = cfg.data.intensity.reader_args(), size if cfg.data.cache else None
    train = ImageDataset(manifest, train_rows, augment, chans, classes, reader, cache_size)
    val = ImageDataset(manifest, val_rows, Single(eval_view(size, **norm, zscore=z)), chans, classes, reader, cache_size)
    workers = cfg.runtime.num_workers
    train_data = engine.loader(train, cfg.data.batch_size, rt, train=True, num_workers=workers)
    val_data = engine.loader(val, cfg.data.batch_size, rt, train=False, num_workers=workers)

    best: dict = {}

    def validate(epoch: int) -> dict:
        probs, targets = engine.predict(model, val_data, rt)
        m = classification_metrics(targets, probs, classes)
        score = m["auroc"] if m["auroc"] is not None else m["balanced_accuracy"]
        if not best or score > best["score"]:
            best.update(score=score, epoch=epoch, metrics=m, state=adapters.trainable_state(model))
        return {"val_auroc": m["auroc"], "val_accuracy": m["accuracy"]}

    engine.fit(Classifier(model), train_data, cfg.optim, rt, out_dir / "log.jsonl", "finetune", validate)
    model.load_state_dict(best["state"], strict=False)
    if rt.is_main:
        meta = checkpoint.metadata(
            arch, size, norm, num_classes=len(classes), classes=classes,
            adapter=cfg.adapter.model_dump(), intensity=cfg.data.intensity.model_dump(mode="json"),
            data_fingerprint=fingerprint(cfg.data.manifest),
            config_hash=config.digest(config.semantic(cfg)))
        checkpoint.save(out_dir / "model", adapters.merged(model).state_dict(), meta)
    return {"classes": classes, "skipped_rows": write_skipped(out_dir, skipped + skipped_val),
            "best_epoch": best["epoch"], "val": best["metrics"], "trainable_params": trainable, "total_params": total,
            "trainable_fraction": trainable / total, "model": "model"}
