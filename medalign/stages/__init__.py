"""The stages: one config class and one `run(config, out_dir) -> metrics` function each.

The CLI and the pipeline runner call the same function. Stage modules import torch and friends,
so they are imported only when a stage actually runs.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from medalign import config


@dataclass(frozen=True)
class Stage:
    name: str
    config: type[config.Section]
    target: str  # "module:function"
    help: str

    def run(self, cfg: config.Section, out_dir: Path) -> dict:
        module, fn = self.target.split(":")
        return getattr(importlib.import_module(module), fn)(cfg, out_dir)


STAGES = {s.name: s for s in (
    Stage("demo-data", config.DemoDataConfig, "medalign.stages.demo_data:run",
          "write the synthetic quickstart image set and its manifest"),
    Stage("pretrain", config.PretrainConfig, "medalign.stages.pretrain:run",
          "continue self-supervised pretraining (DINO, SimCLR) on unlabeled images"),
    Stage("finetune", config.FinetuneConfig, "medalign.stages.finetune:run",
          "fine-tune on the labeled images: linear probe, LoRA, or all weights"),
    Stage("evaluate", config.EvaluateConfig, "medalign.stages.evaluate:run",
          "score a fine-tuned model on a held-out split"),
)}
