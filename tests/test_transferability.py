"""Transferability scores: the published toy values, brute-force recomputations, signal above noise."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medalign.metrics import transferability as tm

# the toy cross-check: 8 rows, 3 feature dims, 2 target classes, 3 source classes
F = np.array([[.6, .4, .5], [.5, .45, .4], [.7, .35, .6], [.45, .5, .5],
              [.4, .6, .5], [.5, .55, .4], [.35, .65, .6], [.55, .5, .5]])
Y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
P = np.array([[.7, .2, .1], [.6, .3, .1], [.8, .1, .1], [.5, .4, .1],
              [.1, .7, .2], [.2, .6, .2], [.1, .8, .1], [.5, .3, .2]])


@pytest.mark.parametrize("score, expected", [
    (lambda: tm.logme(F, Y), -0.8906),
    (lambda: tm.leep(P, Y), -0.5292),
    (lambda: tm.nce(P.argmax(1), Y), -0.3128),
    (lambda: tm.hscore(F, Y), 0.9630),
    (lambda: tm.gbc(F, Y), -0.8691),
], ids=["logme", "leep", "nce", "hscore", "gbc"])
def test_published_toy_values(score, expected):
    assert score() == pytest.approx(expected, abs=1e-4)


def _random_case(seed=0, n=30, d=5, classes=3, sources=4):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    rng.shuffle(y)
    f = rng.normal(size=(n, d)) + y[:, None]
    p = rng.dirichlet(np.ones(sources), size=n)
    return f, y, p


def test_knn_matches_a_brute_force_loop():
    f, y, _ = _random_case(seed=1, n=40)
    bank_f, bank_y, query_f, query_y = f[:25], y[:25], f[25:], y[25:]
    got = tm.knn(bank_f, bank_y, query_f, query_y, k=7, temperature=0.5)
    probs = []
    for q in query_f:
        sims = [float(q @ b / np.linalg.norm(q) / np.linalg.norm(b)) for b in bank_f]
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[:7]
        votes = [sum(np.exp(sims[i] / 0.5) for i in order if bank_y[i] == c) for c in range(3)]
        probs.append([v / sum(votes) for v in votes])
    probs = np.array(probs)
    assert got["accuracy"] == pytest.approx(float(np.mean(probs.argmax(1) == query_y)))
    assert got["auroc"] == pytest.approx(roc_auc_score(query_y, probs, multi_class="ovr"))


def test_knn_caps_k_below_the_bank_size():
    f, y, _ = _random_case(seed=2, n=12)
    assert tm.knn(f[:8], y[:8], f[8:], y[8:], k=200)["k"] == 7


def test_leep_matches_its_formula():
    _, y, p = _random_case(seed=3)
    n, z_count = len(y), p.shape[1]
    joint = [[sum(p[i, z] for i in range(n) if y[i] == c) / n for c in range(3)] for z in range(z_count)]
    marginal = [sum(joint[z]) for z in range(z_count)]
    expected = np.mean([np.log(sum(joint[z][y[i]] / marginal[z] * p[i, z] for z in range(z_count)))
                        for i in range(n)])
    assert tm.leep(p, y) == pytest.approx(expected)


def test_nce_matches_minus_the_conditional_entropy():
    _, y, p = _random_case(seed=4)
    z = p.argmax(1)
    n, expected = len(y), 0.0
    for zz in set(z):
        for c in set(y):
            n_zc, n_z = np.sum((z == zz) & (y == c)), np.sum(z == zz)
            if n_zc:
                expected += n_zc / n * np.log(n_zc / n_z)
    assert tm.nce(z, y) == pytest.approx(expected)


def test_hscore_matches_explicit_covariances():
    f, y, _ = _random_case(seed=5)
    n = len(f)
    mu = f.sum(0) / n
    cov_f = sum(np.outer(x - mu, x - mu) for x in f) / n
    means = {c: f[y == c].mean(0) for c in set(y)}
    cov_g = sum(np.outer(means[c] - mu, means[c] - mu) for c in y) / n
    expected = np.trace(np.linalg.inv(cov_f) @ cov_g)
    assert tm.hscore(f, y) == pytest.approx(expected)
    # the elementwise product (a known bug in public code) gives something else
    assert np.trace(np.linalg.inv(cov_f) * cov_g) != pytest.approx(expected)


@pytest.mark.parametrize("name, score", [
    ("knn", lambda f, y: tm.knn(f[:60], y[:60], f[60:], y[60:], k=15)["auroc"]),
    ("linear", lambda f, y: tm.linear_probe(f[:60], y[:60], f[60:], y[60:])["auroc"]),
    ("logme", tm.logme), ("nleep", tm.nleep), ("hscore", tm.hscore), ("gbc", tm.gbc),
])
def test_features_that_separate_the_classes_score_above_shuffled_labels(name, score):
    rng = np.random.default_rng(6)
    y = np.arange(90) % 2
    f = rng.normal(size=(90, 8))
    f[:, 0] += 3.0 * y  # one informative direction, class means 3 standard deviations apart
    shuffled = rng.permutation(y)
    assert score(f, y) > score(f, shuffled), name


def test_source_labels_that_predict_the_target_score_above_shuffled_ones():
    rng = np.random.default_rng(7)
    y = np.arange(60) % 2
    p = rng.dirichlet(np.ones(4), size=60)
    p[np.arange(60), y] += 2.0  # sources 0/1 track the target classes
    p /= p.sum(1, keepdims=True)
    shuffled = rng.permutation(y)
    assert tm.leep(p, y) > tm.leep(p, shuffled)
    assert tm.nce(p.argmax(1), y) > tm.nce(p.argmax(1), shuffled)
