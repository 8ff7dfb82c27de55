"""Patient-level bootstrap intervals: coverage by simulation, pairing, undefined resamples."""
from __future__ import annotations

import numpy as np
from scipy.stats import norm, rankdata
from sklearn.metrics import roc_auc_score

from medalign.metrics.bootstrap import group_index, intervals, paired_difference

MU, NOISE, PATIENTS, IMAGES = 1.0, 0.3, 60, 5
TRUE_AUROC = norm.cdf(MU / np.sqrt(2 * (1 + NOISE**2)))  # two images of two random patients, one of each class


def _draw(rng):
    """Patients with several images that share the patient's label and most of its score."""
    y = rng.random(PATIENTS) < 0.4
    u = rng.normal(MU * y, 1.0)
    rows = np.repeat(np.arange(PATIENTS), IMAGES)
    return y[rows].astype(int), u[rows] + NOISE * rng.normal(size=len(rows)), rows


def _auroc(y, s):
    """Mann-Whitney's AUROC: sklearn's value (checked below) at a tenth of its per-call overhead."""
    def metric(i):
        pos = y[i].sum()
        if not 0 < pos < len(i):
            return {"auroc": None}
        return {"auroc": (rankdata(s[i])[y[i] == 1].sum() - pos * (pos + 1) / 2) / (pos * (len(i) - pos))}
    return metric


def interval(statistic, members, n=1000, seed=0):
    return intervals(statistic, members, n, seed)["auroc"]


def test_the_fast_auroc_is_sklearns():
    y, s, _ = _draw(np.random.default_rng(5))
    rows = np.arange(len(y))
    assert abs(_auroc(y, s)(rows)["auroc"] - roc_auc_score(y, s)) < 1e-12


def test_patient_bootstrap_covers_the_true_auroc_and_an_image_bootstrap_does_not():
    rng = np.random.default_rng(0)
    hits = {"patients": 0, "images": 0}
    draws = 100
    for d in range(draws):
        y, s, patient = _draw(rng)
        for unit, groups in (("patients", patient), ("images", None)):
            lo, hi = interval(_auroc(y, s), group_index(groups, len(y)), 200, seed=d)
            hits[unit] += lo <= TRUE_AUROC <= hi
    assert 0.88 <= hits["patients"] / draws <= 1.0, hits
    assert hits["images"] / draws <= 0.8, hits  # ~0.6 expected: 5 nearly identical images count as 5 patients


def test_paired_difference_is_narrower_than_the_two_intervals_and_excludes_zero_for_a_real_gap():
    rng = np.random.default_rng(1)
    y, s, patient = _draw(rng)
    better = s + 2.0 * (y - 0.5)  # the same patients' scores with the classes pushed apart
    members = group_index(patient, len(y))
    lo, hi = paired_difference(_auroc(y, better), _auroc(y, s), members, n_resamples=300)["auroc"]
    assert 0 < lo < hi
    a, b = interval(_auroc(y, better), members, 300), interval(_auroc(y, s), members, 300)
    assert hi - lo < (a[1] - a[0]) + (b[1] - b[0])


def test_same_seed_same_interval_and_undefined_resamples_dropped():
    y, s, patient = _draw(np.random.default_rng(2))
    members = group_index(patient, len(y))
    assert interval(_auroc(y, s), members, 100, seed=3) == interval(_auroc(y, s), members, 100, seed=3)
    assert interval(_auroc(y, s), members, 100, seed=3) != interval(_auroc(y, s), members, 100, seed=4)
    one_positive = np.zeros_like(y)
    one_positive[:IMAGES] = 1  # one positive patient: a third of the resamples miss it and are dropped
    lo, hi = interval(_auroc(one_positive, s), members, 100)
    assert 0 <= lo <= hi <= 1
    assert interval(_auroc(np.zeros_like(y), s), members, 100) is None  # never defined

def test_groups_with_empty_values_are_single_rows():
    members = group_index(["a", "", "a", None, "b"], 5)
    assert [m.tolist() for m in members] == [[0, 2], [1], [3], [4]]
