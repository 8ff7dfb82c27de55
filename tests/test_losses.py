"""Losses: focal reduces to torch's cross-entropy; class weights; CORAL by hand and on a toy fit."""
import math

import pytest
import torch
import torch.nn.functional as F

from medalign.models.losses import CoralHead, class_weights, coral_loss, coral_probs, focal_loss
from medalign.tasks import Task

LOGITS = torch.randn(16, 4, generator=torch.Generator().manual_seed(0)) * 3
TARGETS = torch.tensor([0, 1, 2, 3, 3, 3, 0, 1, 2, 2, 1, 0, 3, 3, 1, 0])
WEIGHT = torch.tensor([0.5, 2.0, 1.0, 3.0])


@pytest.mark.parametrize("weight", [None, WEIGHT], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1], ids=["sharp", "smoothed"])
def test_focal_with_gamma_0_is_torch_cross_entropy(weight, smoothing):
    got = focal_loss(LOGITS, TARGETS, gamma=0.0, weight=weight, label_smoothing=smoothing)
    want = F.cross_entropy(LOGITS, TARGETS, weight=weight, label_smoothing=smoothing)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_focal_down_weights_easy_examples():
    easy, hard = torch.tensor([[6.0, 0.0, 0.0]]), torch.tensor([[0.5, 0.0, 0.0]])
    target = torch.tensor([0])

    def ratio(logits):
        return (focal_loss(logits, target, gamma=2.0) / F.cross_entropy(logits, target)).item()

    # the ratio is (1 - p_t)^2: ~2.5e-3 for the confident example, ~0.36 for the uncertain one
    assert ratio(easy) < 0.01 < 0.3 < ratio(hard) < 1


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_gradient_is_finite_on_a_saturated_softmax(gamma):
    logits = torch.tensor([[100.0, 0.0, 0.0]], requires_grad=True)
    focal_loss(logits, torch.tensor([0]), gamma=gamma).backward()
    assert torch.isfinite(logits.grad).all()


def test_class_weights_balance_the_samples():
    targets = torch.tensor([0, 0, 0, 1])
    w = class_weights(targets, 2)
    assert w.tolist() == pytest.approx([2 / 3, 2.0])
    assert w[targets].mean().item() == pytest.approx(1.0)


def test_an_absent_class_keeps_weight_1_and_the_mean_stays_1():
    targets = torch.tensor([0, 0, 0, 1])
    w = class_weights(targets, 3)
    assert w.tolist() == pytest.approx([2 / 3, 2.0, 1.0])
    assert w[targets].mean().item() == pytest.approx(1.0)


def test_coral_loss_is_the_summed_per_task_bce():
    logits = torch.tensor([[2.0, 0.5, -1.0], [-0.3, -1.2, -2.5], [3.0, 1.0, 0.2]])
    grades = torch.tensor([1, 0, 3])
    total = 0.0
    for row, grade in zip(logits.tolist(), grades.tolist()):
        for k, z in enumerate(row):
            p = 1 / (1 + math.exp(-z))
            total -= math.log(p) if grade > k else math.log(1 - p)
    assert coral_loss(logits, grades).item() == pytest.approx(total / 3, rel=1e-6)


def test_coral_probs_and_grade():
    # ordered, as a CoralHead's shared weight and decreasing biases make them
    logits = torch.randn(32, 4, generator=torch.Generator().manual_seed(1)).sort(1, descending=True).values * 2
    probs = coral_probs(logits)
    assert probs.shape == (32, 5)
    assert (probs >= 0).all()
    assert torch.allclose(probs.sum(1), torch.ones(32))
    counted = [sum(1 for z in row if 1 / (1 + math.exp(-z)) > 0.5) for row in logits.tolist()]
    # the product's rule (Task.predicted on the probabilities) agrees with counting on the logits
    assert Task("ordinal", list("abcde")).predicted(probs.numpy()).tolist() == counted


def test_expected_grade_rises_with_the_shared_score():
    head = CoralHead(3, 5)
    assert (head.in_features, head.out_features) == (3, 4)
    with torch.no_grad():
        head.linear.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
        head.bias.copy_(torch.tensor([1.5, 0.5, -0.5, -1.5]))
        w = head.linear.weight[0]
        x = torch.linspace(-3, 3, 101)[:, None] * w / w.norm()
        expected = (coral_probs(head(x)) * torch.arange(5.0)).sum(1)
    assert (expected.diff() >= 0).all()
    assert expected[0] < 0.5 and expected[-1] > 3.5


def test_coral_head_learns_a_toy_ordinal_problem():
    torch.manual_seed(0)
    x = torch.rand(400, 1) * 4 - 2
    grades = (x[:, 0:1] > torch.tensor([-1.0, 0.0, 1.0])).sum(1)
    head = CoralHead(1, 4)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        coral_loss(head(x), grades).backward()
        opt.step()
    with torch.no_grad():
        predicted = Task("ordinal", list("abcd")).predicted(coral_probs(head(x)).numpy())
    accuracy = float((predicted == grades.numpy()).mean())
    assert accuracy > 0.9
    assert (head.bias.diff() < 0).all()
