"""evaluate's body: intervals, a validation-chosen operating point, subgroups and their gaps."""
from __future__ import annotations

import numpy as np
import pytest

from medalign import config
from medalign.evaluation import evaluate, paired
from medalign.tasks import Task

TASK = Task("classification", ["normal", "lesion"])


def _cfg(**kw):
    """An evaluate config; keys as overrides, e.g. bootstrap.resamples=200."""
    overrides = {"bootstrap.resamples": 200, "min_cases": 5, **kw}
    return config.load(config.EvaluateConfig, None, ["model=m", "data.manifest=m.csv",
                                                     *(f"{k}={v}" for k, v in overrides.items())])


def _data(seed=0, n=300, worse_site="b"):
    """Two images per patient; the model separates the classes less well at `worse_site`."""
    rng = np.random.default_rng(seed)
    y = np.repeat(rng.integers(0, 2, n // 2), 2)
    site = np.where(np.arange(n) % 4 < 3, "a", "b")
    margin = np.where(site == worse_site, 0.4, 2.0)
    logit = rng.normal(margin * (y - 0.5) * 2, 1.0)
    p = 1 / (1 + np.exp(-logit))
    rows = [{"patient_id": f"P{i // 2}", "site": s, "scanner": "x" if i < n - 6 else "rare"} for i, s in enumerate(site)]
    return y, np.stack([1 - p, p], 1), rows


def test_every_headline_number_has_an_interval_around_it():
    y, p, rows = _data()
    out = evaluate(TASK, y, p, rows, _cfg(), val=_data(1)[:2])
    for k in ("auroc", "auprc", "accuracy", "balanced_accuracy", "f1_macro", "kappa", "ece", "brier"):
        lo, hi = out["intervals"][k]
        assert lo <= out[k] <= hi, k
    assert out["bootstrap"] == {"resamples": 200, "seed": 0, "level": 0.95, "unit": "patient_id", "groups": 150}
    op = out["operating_point"]
    assert op["chosen_on"] == "val" and op["rule"] == "youden" and 0 < op["threshold"] < 1
    lo, hi = op["intervals"]["sensitivity"]
    assert lo <= op["sensitivity"] <= hi


def test_the_operating_point_comes_from_validation_not_from_the_scored_rows():
    y, p, rows = _data()
    shifted = np.stack([1 - p[:, 1] ** 3, p[:, 1] ** 3], 1)  # validation scores on another scale
    a = evaluate(TASK, y, p, rows, _cfg(**{"bootstrap.resamples": 50}), val=(y, p))["operating_point"]["threshold"]
    b = evaluate(TASK, y, p, rows, _cfg(**{"bootstrap.resamples": 50}), val=(y, shifted))["operating_point"]["threshold"]
    assert b == pytest.approx(a ** 3, rel=1e-6)
    sens = evaluate(TASK, y, p, rows, _cfg(**{"bootstrap.resamples": 50, "operating_point.rule": "sensitivity", "operating_point.sensitivity": 0.95}),
                    val=(y, p))["operating_point"]
    assert sens["sensitivity"] >= 0.95 and sens["target"] == 0.95


def test_subgroups_show_the_gap_and_say_when_there_are_too_few_cases():
    y, p, rows = _data()
    out = evaluate(TASK, y, p, rows, _cfg(subgroups="[site, scanner]"), val=(y, p))["subgroups"]
    site = out["site"]
    assert site["values"]["a"]["auroc"] > site["values"]["b"]["auroc"]
    lo, hi = site["gaps"]["auroc_difference"]["interval"]
    assert 0 < lo <= site["gaps"]["auroc_difference"]["value"] <= hi
    assert site["gaps"]["equalized_odds_difference"]["value"] > 0
    assert "fewer than 5 cases of a class" in out["scanner"]["values"]["rare"]["too_few"]
    assert out["scanner"]["gaps"] == {}  # one usable value: no gap to measure


def test_paired_difference_between_two_models_on_the_same_patients():
    y, p, rows = _data()
    noisy = np.clip(p + np.random.default_rng(3).normal(0, 0.3, p.shape), 1e-3, None)
    noisy /= noisy.sum(1, keepdims=True)
    d = paired(TASK, y, p, noisy, rows, _cfg())["auroc"]
    assert d["difference"] == pytest.approx(d["a"] - d["b"]) and d["interval"][0] > 0
