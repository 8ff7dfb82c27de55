"""pretrain: continued self-supervised pretraining of a timm backbone on unlabeled images."""
from __future__ import annotations

from functools import partial
from pathlib import Path

from medalign import config, engine, ssl
from medalign.data.datasets import ImageDataset, load_rows, write_skipped
from medalign.data.manifest import fingerprint
from medalign.models import backbones, checkpoint


def run(cfg: config.PretrainConfig, out_dir: Path) -> dict:
    rt = engine.setup(cfg.runtime, cfg.seed)
    manifest, rows, skipped = load_rows(cfg.data.manifest, cfg.data.splits, cfg.data.on_error)
    arch, norm = backbones.architecture(cfg.backbone), backbones.normalization(cfg.backbone)
    objective, views = ssl.build(cfg.method, cfg, partial(backbones.create, cfg.backbone), norm["mean"], norm["std"])
    dataset = ImageDataset(manifest, rows, views.reseed(cfg.seed + rt.rank), arch["in_chans"],
                           reader=cfg.data.intensity.reader_args(),
                           cache_size=cfg.backbone.img_size if cfg.data.cache else None)
    data = engine.loader(dataset, cfg.data.batch_size, rt, train=True, num_workers=cfg.runtime.num_workers)
    history = engine.fit(objective, data, cfg.optim, rt, out_dir / "log.jsonl", desc="pretrain")
    if rt.is_main:
        meta = checkpoint.metadata(
            arch, cfg.backbone.img_size, norm, num_classes=0, ssl_method=cfg.method.name,
            intensity=cfg.data.intensity.model_dump(mode="json"),
            data_fingerprint=fingerprint(cfg.data.manifest), config_hash=config.digest(config.semantic(cfg)))
        checkpoint.save(out_dir / "checkpoint", objective.backbone().state_dict(), meta)
    last = history[-1]
    return {"images": len(dataset), "skipped_rows": write_skipped(out_dir, skipped), "epochs": cfg.optim.epochs, "final_loss": last["loss"],
            "embedding_std": last["embedding_std"], "seconds": last["elapsed_s"],
            "img_per_s": len(dataset) * cfg.optim.epochs / last["elapsed_s"], "checkpoint": "checkpoint"}

