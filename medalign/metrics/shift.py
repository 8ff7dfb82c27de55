"""How far apart two sets of features are: the Fréchet distance between their Gaussian fits (FID's
formula, on any backbone's features) and the kernel maximum mean discrepancy with a permutation
p-value. Written here on scipy and scikit-learn because neither ships them: torchmetrics' FID is
tied to an Inception network, and no dependency offers MMD with its permutation test."""
from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg
from sklearn.metrics.pairwise import euclidean_distances, rbf_kernel


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) over rows of features (n, d).

    With fewer rows than feature dimensions the covariances are singular and the distance is a rough
    estimate (biased upwards); compare distances measured on equal numbers of rows."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():  # singular products are expected (see above) and handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(root).all():  # regularise, as FID implementations do
            eps = 1e-6 * np.eye(len(cov_a))
            root = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root.real))


def median_bandwidth(x: np.ndarray) -> float:
    """The median pairwise distance (the usual RBF bandwidth heuristic), over the pooled rows."""
    d = euclidean_distances(x, x)
    return float(np.median(d[np.triu_indices_from(d, k=1)])) or 1.0


def mmd(a: np.ndarray, b: np.ndarray, permutations: int = 500, seed: int = 0) -> dict:
    """Unbiased squared MMD with an RBF kernel (median bandwidth on the pooled rows), and the share of
    label permutations whose MMD reaches the observed one (the p-value, with the +1 correction)."""
    pooled = np.concatenate([a, b])
    sigma = median_bandwidth(pooled)
    k = rbf_kernel(pooled, gamma=1.0 / (2 * sigma**2))
    n = len(a)
    observed = _mmd2(k, np.arange(len(pooled)) < n)
    rng = np.random.default_rng(seed)
    inside = np.arange(len(pooled)) < n
    hits = sum(_mmd2(k, rng.permutation(inside)) >= observed for _ in range(permutations))
    return {"mmd2": observed, "p_value": (hits + 1) / (permutations + 1), "bandwidth": sigma,
            "permutations": permutations}


def _mmd2(k: np.ndarray, first: np.ndarray) -> float:
    kaa, kbb, kab = k[np.ix_(first, first)], k[np.ix_(~first, ~first)], k[np.ix_(first, ~first)]
    m, n = len(kaa), len(kbb)
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
                 - 2 * kab.mean())
