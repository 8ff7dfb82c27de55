"""pretrain: continued self-supervised pretraining of a timm backbone on unlabeled images."""
from __future__ import annotations

import logging
from pathlib import Path

from medalign import config, engine, ssl
from medalign.data.datasets import write_skipped
from medalign.errors import ConfigError
from medalign.models import backbones, checkpoint
from medalign.stages import _common as common

log = logging.getLogger(__name__)
HELD_OUT = {"val", "valid", "validation", "test"}


def run(cfg: config.PretrainConfig, out_dir: Path) -> dict:
    rt = engine.setup(cfg.runtime, cfg.seed)
    held_out = sorted(HELD_OUT & {s.lower() for s in cfg.data.splits})
    if held_out and cfg.data.strict:
        raise ConfigError(f"data.splits: {held_out} are held-out splits; data.strict refuses to pretrain on them")
    if held_out:
        log.warning("pretrain: data.splits includes held-out split(s) %s: evaluation on them is no longer "
                    "independent of pretraining (data.strict=true refuses this)", held_out)
    manifest, rows, skipped = common.rows(cfg.data, cfg.data.splits)
    bb = backbones.resolve(cfg.backbone)
    common.record_built(out_dir, cfg, bb, rt)

    objective, views = ssl.build(cfg.method, cfg, bb)
    dataset = common.dataset(manifest, rows, cfg.data, cfg.data.intensity, views.reseed(cfg.seed + rt.rank), bb)
    history = engine.fit(objective, common.loader(dataset, cfg.data, cfg, rt, train=True), cfg.optim, rt,
                         out_dir, desc="pretrain")

    if rt.is_main:
        checkpoint.save(out_dir / "checkpoint", objective.backbone().state_dict(),
                        common.metadata(bb, cfg, out_dir, num_classes=0, ssl_method=cfg.method.name))
    last = history[-1]
    return {"images": len(dataset), "skipped_rows": write_skipped(out_dir, skipped) if rt.is_main else len(skipped),
            "epochs": cfg.optim.epochs, "final_loss": last["loss"], "embedding_std": last["embedding_std"],
            "seconds": last["elapsed_s"], "img_per_s": len(dataset) * cfg.optim.epochs / last["elapsed_s"],
            "checkpoint": "checkpoint"}
