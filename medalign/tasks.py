"""What a label column means: one class per image, several classes, or an ordered grade.

A `Task` turns manifest labels into training targets, builds the head, computes the loss, turns
logits into probabilities and scores predictions; finetune, evaluate and predict share it, and
model.json records it (`as_meta`), so a saved model is read the way it was trained.

    classification  one label per image; cross-entropy or focal loss; selected on AUROC
    multilabel      labels joined by `separator` ("effusion;nodule"); one sigmoid per class; macro AUROC
    ordinal         grades in order (retinopathy 0-4, BI-RADS): CORAL cumulative logits
                    (Cao et al. 2020), grade probabilities monotone in the score; quadratic kappa
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medalign import config
from medalign.data.datasets import class_names
from medalign.data.manifest import Manifest
from medalign.errors import ConfigError, DataError
from medalign.metrics.classification import classification_metrics
from medalign.metrics.tasks import multilabel_metrics, ordinal_metrics
from medalign.models import losses


@dataclass(frozen=True)
class Task:
    kind: str
    classes: list[str]  # for ordinal, the grades from lowest to highest
    separator: str = ";"

    @classmethod
    def from_config(cls, cfg: config.TaskConfig, manifest: Manifest, rows: list[dict]) -> "Task":
        labels = set(class_names(manifest, rows))  # a label on every row, two or more distinct
        if cfg.type == "multilabel":
            labels = {c for v in labels for c in v.split(cfg.separator)}
        if cfg.type == "ordinal":
            classes = list(cfg.grades) if cfg.grades else _numeric_order(labels, manifest)
        else:
            classes = sorted(labels)
        if len(classes) < 2:
            raise DataError(f"manifest {manifest.path}: need at least 2 classes to train, found {classes}")
        task = cls(cfg.type, classes, cfg.separator)
        task.targets(rows, manifest)  # refuses labels outside the classes now, not mid-training
        return task

    @classmethod
    def from_meta(cls, meta: dict) -> "Task":
        return cls(**meta["task"]) if "task" in meta else cls("classification", meta["classes"])

    def as_meta(self) -> dict:
        return asdict(self)

    def targets(self, rows: list[dict], manifest: Manifest) -> list:
        """Each row's target: a class index, a multi-hot vector, or a grade index."""
        split = [r["label"].split(self.separator) if self.kind == "multilabel" else [r["label"]] for r in rows]
        unknown = sorted({v for vs in split for v in vs} - set(self.classes))
        if unknown:
            raise DataError(f"manifest {manifest.path}: labels {unknown} are not among the model's "
                            f"{'grades' if self.kind == 'ordinal' else 'classes'} {self.classes}")
        if self.kind == "multilabel":
            return [[float(c in vs) for c in self.classes] for vs in split]
        return [self.classes.index(vs[0]) for vs in split]

    def head(self, in_features: int, cfg: config.HeadConfig) -> nn.Module:
        out = len(self.classes)
        if self.kind == "ordinal":
            last: nn.Module = losses.CoralHead(cfg.hidden if cfg.name == "mlp" else in_features, out)
        else:
            last = nn.Linear(cfg.hidden if cfg.name == "mlp" else in_features, out)
        if cfg.name == "linear":
            return last
        return nn.Sequential(nn.Linear(in_features, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout), last)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, cfg: config.LossConfig,
             weight: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "ordinal":
            return losses.coral_loss(logits, y)
        if self.kind == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, y, pos_weight=weight)
        if cfg.name == "focal":
            return losses.focal_loss(logits, y, cfg.gamma, weight, cfg.label_smoothing)
        return F.cross_entropy(logits, y, weight=weight, label_smoothing=cfg.label_smoothing)

    def class_weights(self, targets: list) -> torch.Tensor:
        t = torch.tensor(targets)
        if self.kind == "multilabel":  # BCE's pos_weight: negatives per positive, per class
            pos = t.sum(0).clamp_min(1)
            return (len(t) - pos) / pos
        return losses.class_weights(t, len(self.classes))

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        if self.kind == "ordinal":
            return losses.coral_probs(logits)
        if self.kind == "multilabel":
            return logits.sigmoid()
        return logits.softmax(-1)

    def predicted(self, probs: np.ndarray) -> np.ndarray:
        """Class indices, grades, or 0/1 per class for multi-label."""
        if self.kind == "ordinal":
            # CORAL's own rule: the grade is how many cumulative P(y > k) pass 0.5, not the argmax
            return (1 - np.cumsum(probs, axis=1)[:, :-1] > 0.5).sum(1)
        if self.kind == "multilabel":
            return (probs >= 0.5).astype(int)
        return probs.argmax(1)

    def metrics(self, targets: np.ndarray, probs: np.ndarray) -> dict:
        if self.kind == "ordinal":
            return ordinal_metrics(targets, self.predicted(probs), self.classes)
        if self.kind == "multilabel":
            return multilabel_metrics(targets, probs, self.classes)
        return classification_metrics(targets, probs, self.classes)

    def score(self, metrics: dict) -> float:
        """What model selection maximises on validation."""
        if self.kind == "ordinal":
            return metrics["quadratic_kappa"] if metrics["quadratic_kappa"] is not None else -metrics["mae"]
        if metrics["auroc"] is not None:
            return metrics["auroc"]
        return metrics.get("balanced_accuracy", metrics.get("exact_match", 0.0))


def _numeric_order(labels: set[str], manifest: Manifest) -> list[str]:
    try:
        return sorted(labels, key=float)
    except ValueError:
        raise ConfigError(f"task.type=ordinal: labels of {manifest.path} are not numbers ({sorted(labels)[:5]}); "
                          "list them from lowest to highest in task.grades") from None
