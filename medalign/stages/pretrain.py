"""pretrain: continued self-supervised pretraining of a timm backbone on unlabeled images."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from medalign import config, engine, ssl, tracking
from medalign.data.datasets import class_names, write_skipped
from medalign.errors import ConfigError, writing
from medalign.models import backbones, checkpoint, tuning
from medalign.stages import _common as common

log = logging.getLogger(__name__)
HELD_OUT = {"val", "valid", "validation", "test"}


def run(cfg: config.PretrainConfig, out_dir: Path) -> dict:
    rt = engine.setup(cfg.runtime, cfg.seed)
    tracker = tracking.tracker(cfg, out_dir, rt.is_main, "pretrain")
    held_out = sorted(HELD_OUT & {s.lower() for s in cfg.data.splits})
    if held_out and cfg.data.strict:
        raise ConfigError(f"data.splits: {held_out} are held-out splits; data.strict refuses to pretrain on them")
    if held_out:
        log.warning("pretrain: data.splits includes held-out split(s) %s: evaluation on them is no longer "
                    "independent of pretraining (data.strict=true refuses this)", held_out)
    manifest, rows, skipped = common.rows(cfg.data, cfg.data.splits)
    bb = backbones.resolve(cfg.backbone)
    common.record_built(out_dir, cfg, bb, rt)

    # every network the method builds (student, EMA teacher) gets the same tuning
    bb = dataclasses.replace(bb, tuning=cfg.tuning, tuning_seed=cfg.seed)
    objective, views = ssl.build(cfg.method, cfg, bb)
    # the backbone weights that train (the student's; heads and frozen teachers aside), of its size
    trainable = sum(p.numel() for m in engine.timm_models(objective) for p in m.parameters() if p.requires_grad)
    total = sum(p.numel() for p in objective.backbone().parameters())
    dataset = common.dataset(manifest, rows, cfg.data, cfg.data.intensity, views.reseed(cfg.seed + rt.rank), bb)
    history = engine.fit(objective, common.loader(dataset, cfg.data, cfg, rt, train=True), cfg.optim, rt,
                         out_dir, desc="pretrain", monitor=_knn_monitor(cfg, bb, objective, rt), tracker=tracker)
    collapsed = _collapsed(history, objective.backbone().num_features, cfg.monitor.collapse_below)

    if rt.is_main:
        net = objective.backbone()
        if hasattr(net, "save_pretrained"):  # peft's own layout, to load the adapter alone
            with writing(out_dir / "adapter", checkpoint.THEN):
                net.save_pretrained(str(out_dir / "adapter"))
        meta = common.metadata(bb, cfg, out_dir, num_classes=0, ssl_method=cfg.method.name,
                               tuning=cfg.tuning.model_dump(mode="json"))
        checkpoint.save(out_dir / "checkpoint", tuning.merged(net).state_dict(), meta)
    last = history[-1]
    return {"images": len(dataset), "skipped_rows": write_skipped(out_dir, skipped) if rt.is_main else len(skipped),
            "epochs": cfg.optim.epochs, "final_loss": last["loss"], "embedding_std": last["embedding_std"],
            "collapsed_epochs": collapsed, "trainable_params": trainable, "backbone_params": total, "trainable_fraction": trainable / total,
            "peak_memory_mib": engine.peak_memory_mib(rt), "seconds": last["elapsed_s"],
            "img_per_s": len(dataset) * cfg.optim.epochs / last["elapsed_s"], "checkpoint": "checkpoint"}


def _knn_monitor(cfg: config.PretrainConfig, bb, objective, rt: engine.Runtime):
    """k-NN AUROC of the network being pretrained, on frozen features of a labeled manifest."""
    from medalign.metrics.transferability import knn

    m = cfg.monitor
    if not m.manifest:
        return None
    data = config.DataSection(manifest=m.manifest, batch_size=cfg.data.batch_size, on_error=cfg.data.on_error)
    manifest, bank_rows, _ = common.rows(data, m.bank_split)
    _, eval_rows, _ = common.rows(data, m.eval_split)
    classes = class_names(manifest, bank_rows)
    view = common.eval_transform(bb, cfg.data.intensity)

    def loader(rows):
        ds = common.dataset(manifest, rows, data, cfg.data.intensity, view, bb, classes)
        return common.loader(ds, data, cfg, rt, train=False)

    bank, held = loader(bank_rows), loader(eval_rows)

    def measure(epoch: int) -> dict:
        net = objective.backbone()
        (fb, yb), (fe, ye) = common.features(net, bank, rt).tensors, common.features(net, held, rt).tensors
        r = knn(fb.numpy(), yb.numpy(), fe.numpy(), ye.numpy(), k=m.k, temperature=m.temperature)
        return {"knn_auroc": r["auroc"], "knn_accuracy": r["accuracy"]}
    return measure


def _collapsed(history: list[dict], dim: int, below: float) -> list[int]:
    """Epochs whose features collapsed: l2-normalised embeddings' std is ~1/sqrt(dim) when healthy."""
    epochs = [h["epoch"] for h in history if "embedding_std" in h and h["embedding_std"] * dim ** 0.5 < below]
    if epochs:
        log.warning("pretrain: embedding_std x sqrt(%d) fell below %.2g in epoch(s) %s: the features are "
                    "collapsing (a lower lr, more data or another method may help)", dim, below, epochs)
    return epochs
