"""One config class per stage, filed in STAGES with the function that runs it.

A stage's function lives in `medalign.stages.<name>` (dashes as underscores) as `run(cfg, out_dir)`;
it is imported only when the stage runs, since stage modules import torch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from medalign.config.adapters import ADAPTERS, TUNINGS, FullAdapter, LoraAdapter
from medalign.config.loading import Section, cosmetic, tagged_union
from medalign.config.sections import (AugmentConfig, BackboneConfig, DataSection, Logging, MonitorConfig,
                                      OptimConfig, Runtime, TrainingData)
from medalign.config.ssl import METHODS, DinoConfig
from medalign.registry import Registry


@dataclass(frozen=True)
class Stage:
    name: str
    config: type[Section]
    help: str

    def run(self, cfg: Section, out_dir: Path) -> dict:
        module = importlib.import_module(f"medalign.stages.{self.name.replace('-', '_')}")
        return module.run(cfg, out_dir)


STAGES: Registry[Stage] = Registry("stage")


def stage(name: str, help: str):
    """Files the decorated config class as the config of stage `name`."""
    def file(cls: type[Section]) -> type[Section]:
        STAGES.register(name)(Stage(name, cls, help))
        return cls
    return file


@stage("demo-data", "write the synthetic quickstart image set and its manifest")
class DemoDataConfig(Section):
    n_unlabeled: int = Field(600, ge=0)
    n_train: int = Field(120, ge=0)
    n_val: int = Field(60, ge=0)
    n_test: int = Field(200, ge=0)
    img_size: int = Field(64, ge=16)
    lesion_fraction: float = Field(0.5, ge=0, le=1)
    seed: int = 0
    folds: int = Field(0, ge=0, description="k >= 3: a patient-grouped `fold` column over train+val, for "
                                            "data.fold (k-fold cross-validation)")


SSLMethod = tagged_union(METHODS)
Adapter = tagged_union(ADAPTERS)
Tuning = tagged_union(TUNINGS)


class PretrainData(TrainingData):
    splits: list[str] = Field(["unlabeled", "train"],
                              description="rows used (labels are ignored); keep val/test out of pretraining")
    strict: bool = Field(False, description="refuse val/test rows in splits (default: a warning)")


@stage("pretrain", "continue self-supervised pretraining (DINO, DINOv2, SimCLR, MoCo v3, BYOL, MAE) on "
                   "unlabeled images")
class PretrainConfig(Section):
    seed: int = 0
    backbone: BackboneConfig = BackboneConfig()
    method: SSLMethod = DinoConfig()
    tuning: Tuning = FullAdapter()
    data: PretrainData
    monitor: MonitorConfig = MonitorConfig()
    augment: AugmentConfig = AugmentConfig()
    optim: OptimConfig = OptimConfig()
    runtime: Runtime = Runtime()
    # cosmetic as a whole: an empty section in the cache key would still change every key made before it
    logging: Logging = cosmetic(Logging(), "dashboards besides log.jsonl")

    def inputs(self) -> dict[str, str | None]:
        return {"data.manifest": self.data.manifest, "backbone.checkpoint": self.backbone.checkpoint,
                "monitor.manifest": self.monitor.manifest}


class FinetuneData(TrainingData):
    train_split: str = "train"
    val_split: str = "val"
    subset: str | None = Field(None, description="a 0/1 column of the manifest (e.g. fewshot_k10_s0 from "
                               "`manifest split --few-shot`): train on the train rows where it is 1")
    batch_size: int = Field(32, ge=1)


class FinetuneAugment(AugmentConfig):
    """Milder than pretraining: the labels must survive the augmentation."""
    crop_scale: tuple[float, float] = (0.7, 1.0)
    blur_p: float = Field(0.0, ge=0, le=1)
    noise_p: float = Field(0.0, ge=0, le=1)


class FinetuneOptim(OptimConfig):
    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.01, ge=0)
    patience: int | None = Field(None, ge=1, description="stop after this many epochs without a better "
                                 "validation score (null: run every epoch)")


class TaskConfig(Section):
    type: Literal["classification", "multilabel", "ordinal"] = Field(
        "classification", description="one label per image, several joined by the separator, or ordered grades")
    grades: list[str] | None = Field(None, description="ordinal: the labels from lowest to highest grade "
                                     "(default: numeric labels in numeric order)")
    separator: str = Field(";", min_length=1, description="multilabel: what separates classes in a label")


class HeadConfig(Section):
    name: Literal["linear", "mlp"] = Field("linear", description="the classifier: one linear layer, or an MLP")
    hidden: int = Field(256, ge=1, description="mlp: hidden width")
    dropout: float = Field(0.0, ge=0, lt=1, description="mlp: dropout before the last layer")


class LossConfig(Section):
    """Single-label classification's loss; multi-label tasks use BCE, ordinal ones CORAL's."""
    name: Literal["cross_entropy", "focal"] = Field("cross_entropy", description="focal: Lin et al. 2017, "
                                                    "for strong class imbalance")
    gamma: float = Field(2.0, ge=0, description="focal: how much easy examples are down-weighted")
    class_weights: bool = Field(False, description="weigh classes by inverse training frequency "
                                "(multilabel: BCE pos_weight)")
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class SemiConfig(Section):
    """Semi-supervised fine-tuning over the manifest's unlabeled rows (single-label tasks)."""
    name: Literal["none", "fixmatch", "pseudo_label"] = Field(
        "none", description="fixmatch (Sohn et al. 2020): confident predictions on a weak view train a strong "
        "view; pseudo_label (Lee 2013): they train the weak view itself")
    splits: list[str] = Field(["unlabeled"], min_length=1, description="the unlabeled rows; never val or test. "
                              "The train split here means its rows outside data.subset, labels withheld")
    threshold: float = Field(0.95, gt=0, le=1, description="confidence a prediction needs to become a target")
    mu: int = Field(2, ge=1, description="unlabeled images per labeled one in a batch")
    lambda_u: float = Field(1.0, ge=0, description="weight of the unlabeled loss")


@stage("finetune", "fine-tune on the labeled images with an adapter (linear, LoRA/DoRA, APLA, BitFit, "
                   "partial, full), optionally semi-supervised on the unlabeled ones")
class FinetuneConfig(Section):
    seed: int = 0
    backbone: BackboneConfig = BackboneConfig()
    adapter: Adapter = LoraAdapter()
    task: TaskConfig = TaskConfig()
    head: HeadConfig = HeadConfig()
    loss: LossConfig = LossConfig()
    semi: SemiConfig = SemiConfig()
    data: FinetuneData
    # subclasses, not instances with other values: `optim.epochs=3` alone must keep these defaults
    augment: FinetuneAugment = FinetuneAugment()
    optim: FinetuneOptim = FinetuneOptim()
    runtime: Runtime = Runtime()
    logging: Logging = cosmetic(Logging(), "dashboards besides log.jsonl")

    @model_validator(mode="after")
    def _loss_fits_task(self) -> "FinetuneConfig":
        if self.task.type != "classification" and (self.loss.name != "cross_entropy" or self.loss.label_smoothing):
            raise ValueError(f"loss.name={self.loss.name} and loss.label_smoothing are for task.type=classification; "
                             f"task.type={self.task.type} has its own loss")
        if self.semi.name != "none":
            if self.task.type != "classification":
                raise ValueError(f"semi.name={self.semi.name} is for task.type=classification")
            held_out = sorted(set(self.semi.splits) & {self.data.val_split, "test"})
            if held_out:
                raise ValueError(f"semi.splits {held_out}: unlabeled rows never come from val or test")
            if self.data.train_split in self.semi.splits and self.data.subset is None:
                raise ValueError(f"semi.splits names the train split '{self.data.train_split}': that means its "
                                 "rows outside data.subset, so it needs data.subset")
        return self

    def inputs(self) -> dict[str, str | None]:
        return {"data.manifest": self.data.manifest, "backbone.checkpoint": self.backbone.checkpoint}


class EvaluateData(DataSection):
    split: str = "test"
    val_split: str | None = Field("val", description="the rows that choose the operating point (null: none)")


class BootstrapConfig(Section):
    resamples: int = Field(1000, ge=10, description="bootstrap resamples per interval")
    seed: int = 0
    level: float = Field(0.95, gt=0, lt=1)
    group: str | None = Field("patient_id", description="the column whose values are resampled (patients); "
                                                        "rows without it, or null, resample images")


class OperatingPoint(Section):
    rule: Literal["youden", "sensitivity"] = Field("youden", description="how validation chooses the threshold")
    sensitivity: float = Field(0.9, gt=0, le=1, description="rule=sensitivity: the sensitivity to reach on val")
    threshold: float = Field(0.5, gt=0, lt=1, description="the given threshold, reported besides")


class ReportConfig(Section):
    enabled: bool = Field(True, description="write report.html beside metrics.json")
    thumbnails: bool = Field(False, description="show the images under the explanation maps")
    cases: int = Field(2, ge=0, description="explanation maps per class and outcome (correct, wrong)")
    intended_use: str = "Research use only: not validated for clinical decisions."
    label_source: str = Field("", description="where the labels came from, for the model card")
    limitations: list[str] = Field([], description="known limitations, for the model card")


@stage("evaluate", "score a fine-tuned model on a held-out split: intervals, subgroups, calibration, a report")
class EvaluateConfig(Section):
    model: str = Field(..., description="a finetune output folder, or its model/ checkpoint folder")
    data: EvaluateData
    subgroups: list[str] = Field([], description="manifest columns (site, scanner, sex, age band): metrics per "
                                                 "value and the gaps between them")
    min_cases: int = Field(10, ge=1, description="a subgroup needs this many cases of every class for numbers")
    bootstrap: BootstrapConfig = BootstrapConfig()
    operating_point: OperatingPoint = OperatingPoint()
    report: ReportConfig = ReportConfig()
    runtime: Runtime = Runtime()

    def inputs(self) -> dict[str, str | None]:
        return {"model": self.model, "data.manifest": self.data.manifest}


@stage("collect", "gather several evaluate outputs (a sweep's seeds, a cross-validation's folds): mean, spread, "
                  "pooled out-of-fold metrics")
class CollectConfig(Section):
    runs: list[str] = Field(..., min_length=1, description='evaluate output folders: ["${evaluate[*]}"] in a pipeline')

    def inputs(self) -> dict[str, str | None]:
        return {f"runs.{i}": r for i, r in enumerate(self.runs)}


# the scores `estimate` knows, in the order of its table (medalign.metrics.transferability)
TRANSFERABILITY_SCORES = ("knn", "linear", "logme", "leep", "nleep", "nce", "hscore", "gbc")


class Candidate(Section):
    name: str = Field(..., description="the candidate's row label in estimate.csv")
    backbone: BackboneConfig


class EstimateData(TrainingData):
    train_split: str = Field("train", description="the rows that fit the scores (k-NN bank, probe, LogME...)")
    eval_split: str = Field("val", description="the rows k-NN and the linear probe are measured on")
    subset: str | None = Field(None, description="a 0/1 column of the manifest: only the train rows where it is 1")


class KnnSettings(Section):
    k: int = Field(200, ge=1, description="neighbours that vote (at most the train rows minus one)")
    temperature: float = Field(0.1, gt=0, description="votes weigh exp(cosine similarity / temperature)")


@stage("estimate", "rank starting points by transferability scores of their frozen features, before training")
class EstimateConfig(Section):
    seed: int = 0
    candidates: list[Candidate] = Field(
        ..., min_length=1, description="starting points, each {name, backbone: {name, kwargs, weights, "
        "checkpoint, in_chans, img_size}} (random init, a checkpoint, a pretrain output, named weights)")
    data: EstimateData
    scores: list[Literal[TRANSFERABILITY_SCORES]] = Field(list(TRANSFERABILITY_SCORES), min_length=1)
    knn: KnnSettings = KnnSettings()
    runtime: Runtime = Runtime()

    @field_validator("candidates")
    @classmethod
    def _unique_names(cls, candidates: list[Candidate]) -> list[Candidate]:
        names = [c.name for c in candidates]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"candidate names must be unique: {', '.join(twice)} named twice")
        return candidates

    def inputs(self) -> dict[str, str | None]:
        return {"data.manifest": self.data.manifest,
                **{f"candidates.{i}.backbone.checkpoint": c.backbone.checkpoint for i, c in enumerate(self.candidates)}}
