"""demo-data: the synthetic image set the quickstart runs on."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from medalign.config import DemoDataConfig
from medalign.data import demo
from medalign.data.manifest import read_manifest
from medalign.data.split import split


def run(cfg: DemoDataConfig, out_dir: Path) -> dict:
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: every rank shares the folder; rank 0 writes it
        return {}
    path = demo.generate(out_dir, **cfg.model_dump(exclude={"folds"}))
    if cfg.folds:
        split(path, path, keep_split=True, folds=cfg.folds, seed=cfg.seed)
    manifest = read_manifest(path)
    return {"images": len(manifest.rows), "manifest": manifest.path.name,
            "splits": dict(Counter(r["split"] for r in manifest.rows))}
