"""Typed configs, torch-free: `medalign --help` and `medalign status` load them too.

loading.py   YAML + overrides -> validated model; semantic (the cache's view), digest, dump, describe
sections.py  sections the stages share (backbone, optim, augment, runtime, logging, intensity, data)
ssl.py       one config per SSL method (registry METHODS)
adapters.py  one config per fine-tuning adapter (ADAPTERS) and pretraining tuning (TUNINGS)
stages.py    one config per stage (registry STAGES), with the method and adapter unions
"""
from medalign.config.adapters import (ADAPTERS, TUNINGS, AplaTuning, BitFitTuning, DoraAdapter, ExploraTuning,
                                      FrozenTuning, FullAdapter, LinearAdapter, LoraAdapter, PartialAdapter)
from medalign.config.loading import (Section, apply_overrides, cosmetic, describe, digest, dump, flatten, load,
                                     read_yaml, semantic, validate)
from medalign.config.sections import (AugmentConfig, BackboneConfig, CTWindow, DataSection, Intensity, Logging,
                                      MonitorConfig, OptimConfig, Runtime, TrainingData)
from medalign.config.ssl import (METHODS, BYOLConfig, DINOv2Config, DinoConfig, MAEConfig, MoCoV3Config,
                                 SimCLRConfig)
from medalign.config.stages import (STAGES, Candidate, DemoDataConfig, EstimateConfig, EvaluateConfig,
                                    FinetuneConfig, HeadConfig, LossConfig, PretrainConfig, SemiConfig, Stage,
                                    TaskConfig)

__all__ = [
    "ADAPTERS", "AplaTuning", "AugmentConfig", "BYOLConfig", "BackboneConfig", "BitFitTuning",
    "CTWindow", "Candidate", "DINOv2Config", "DataSection", "DemoDataConfig", "DinoConfig", "DoraAdapter",
    "EstimateConfig", "EvaluateConfig", "ExploraTuning", "FinetuneConfig", "FrozenTuning",
    "FullAdapter", "HeadConfig", "Intensity", "LinearAdapter", "Logging", "LoraAdapter", "LossConfig", "MAEConfig", "METHODS", "MoCoV3Config",
    "MonitorConfig", "OptimConfig", "PartialAdapter", "PretrainConfig", "Runtime", "STAGES", "Section", "SemiConfig", "SimCLRConfig",
    "Stage", "TUNINGS", "TaskConfig", "TrainingData", "apply_overrides", "cosmetic", "describe", "digest", "dump", "flatten",
    "load", "read_yaml", "semantic", "validate",
]
