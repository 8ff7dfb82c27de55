"""Training losses for fine-tuning classifiers: class weights, focal loss, CORAL ordinal regression.

Focal loss: Lin et al. 2017, "Focal Loss for Dense Object Detection", multi-class softmax form.
CORAL: Cao, Mirjalili, Raschka 2020, "Rank consistent ordinal regression for neural networks",
reference code github.com/Raschka-research-group/coral-pytorch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def class_weights(targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights w_c = N / (K n_c), K the classes present (sklearn's "balanced")."""
    counts = torch.bincount(targets, minlength=n_classes).double()
    present = counts > 0
    # an absent class keeps weight 1 rather than 0 (or inf), so a class missing from a small
    # training split still counts if it turns up at validation; K counts only present classes
    # so the weighted mean over the training samples stays exactly 1
    weights = torch.ones(n_classes, dtype=torch.double, device=targets.device)
    weights[present] = len(targets) / (present.sum() * counts[present])
    return weights.float()


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0,
               weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean over the batch of -alpha_c (1 - p_c)^gamma log p_c against the (smoothed) target.

    Smoothing and weighting follow `F.cross_entropy` term for term, so gamma=0 reproduces it: the
    target class carries 1 - s, every class s / K, each term scaled by its class weight, and the
    batch sum is divided by the summed weights of the true classes. With smoothing each class's
    term gets its own focal factor, the focal loss of the smoothed (soft) target.
    """
    n_classes = logits.shape[1]
    logp = F.log_softmax(logits, dim=1)
    alpha = logits.new_ones(n_classes) if weight is None else weight.to(logits)
    # floored because (1 - p)^gamma has an infinite slope at p = 1 when gamma < 1: without it a
    # saturated softmax turns the gradient into 0 * inf = nan
    focus = (1 - logp.exp()).clamp_min(torch.finfo(logp.dtype).eps).pow(gamma)
    terms = -alpha * focus * logp  # [B, K]
    per_sample = ((1 - label_smoothing) * terms.gather(1, targets[:, None]).squeeze(1)
                  + label_smoothing / n_classes * terms.sum(1))
    return per_sample.sum() / alpha[targets].sum()


class CoralHead(nn.Module):
    """K-1 cumulative logits w·x + b_k; sharing the one weight vector makes them rank-consistent."""

    def __init__(self, in_features: int, n_grades: int):
        super().__init__()
        self.in_features = in_features
        self.out_features = n_grades - 1
        self.linear = nn.Linear(in_features, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(self.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.bias


def _levels(grades: torch.Tensor, n_tasks: int) -> torch.Tensor:
    return (grades[:, None] > torch.arange(n_tasks, device=grades.device)).float()


def coral_loss(logits: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of each task "grade > k", summed over the K-1 tasks, batch-averaged."""
    bce = F.binary_cross_entropy_with_logits(logits, _levels(grades, logits.shape[1]).to(logits),
                                             reduction="none")
    return bce.sum(1).mean()


def coral_probs(logits: torch.Tensor) -> torch.Tensor:
    """Grade probabilities [B, K] as differences of the cumulative P(y > k)."""
    above = torch.sigmoid(logits)
    ones = torch.ones_like(above[:, :1])  # shaped from the tensor, so a traced export keeps the batch dynamic
    probs = torch.cat([ones, above], 1) - torch.cat([above, ones - 1], 1)
    # the differences are non-negative only while the biases are ordered: CORAL's training keeps
    # them so in theory, clamping and renormalising guards against the numerical exceptions
    probs = probs.clamp_min(0)
    return probs / probs.sum(1, keepdim=True)

