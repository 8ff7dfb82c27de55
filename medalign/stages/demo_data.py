"""demo-data: the synthetic image set the quickstart runs on."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from medalign.config import DemoDataConfig
from medalign.data import demo
from medalign.data.manifest import read_manifest


def run(cfg: DemoDataConfig, out_dir: Path) -> dict:
    manifest = read_manifest(demo.generate(out_dir, **cfg.model_dump()))
    return {"images": len(manifest.rows), "manifest": manifest.path.name,
            "splits": dict(Counter(r["split"] for r in manifest.rows))}
