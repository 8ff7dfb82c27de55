"""Transferability scores: how well frozen features (or a source classifier's outputs) suit a
labelled target task, computed before any training. numpy, scipy and scikit-learn only.

Conventions shared by every score: natural logarithms; labels are integers 0..C-1; features are
an (n, d) array, source probabilities an (n, Z) array whose rows sum to 1. Higher is better for
every score.
"""
from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medalign.metrics.classification import auroc

EPS = 1e-12  # keeps log(0) finite where a (source, target) pair never co-occurs


def knn(train_f: np.ndarray, train_y: np.ndarray, eval_f: np.ndarray, eval_y: np.ndarray,
        k: int = 200, temperature: float = 0.1) -> dict:
    """Weighted k-NN on cosine similarity, as in Wu et al. 2018 ("Unsupervised Feature Learning
    via Non-Parametric Instance Discrimination") and lightly's `knn_predict`
    (lightly/utils/benchmarking/knn.py): each eval row's k most similar train rows vote for their
    class with weight exp(sim / T). k is capped at the bank size minus one, so a small bank never
    degenerates into every row voting. Returns AUROC of the normalised votes and accuracy."""
    bank, query = _unit(train_f), _unit(eval_f)
    n_classes = int(max(train_y.max(), eval_y.max())) + 1
    k = max(1, min(k, len(bank) - 1))
    sim = query @ bank.T
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    weight = np.exp(np.take_along_axis(sim, top, axis=1) / temperature)
    votes = np.zeros((len(query), n_classes))
    np.add.at(votes, (np.arange(len(query))[:, None], train_y[top]), weight)
    probs = votes / votes.sum(1, keepdims=True)
    return {"auroc": auroc(eval_y, probs), "accuracy": float((probs.argmax(1) == eval_y).mean()), "k": k}


def linear_probe(train_f: np.ndarray, train_y: np.ndarray, eval_f: np.ndarray, eval_y: np.ndarray,
                 cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0), folds: int = 5, seed: int = 0) -> dict:
    """A logistic-regression probe on standardised frozen features (the linear evaluation of
    Kornblith et al. 2019, "Do Better ImageNet Models Transfer Better?"): the inverse regularisation
    C is chosen by stratified cross-validation on the train rows, then AUROC is measured on eval."""
    n_folds = min(folds, int(np.bincount(train_y).min()))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    if n_folds >= 2:
        search = GridSearchCV(model, {"logisticregression__C": list(cs)}, cv=StratifiedKFold(
            n_folds, shuffle=True, random_state=seed), scoring="roc_auc_ovr" if len(np.unique(train_y)) > 2
            else "roc_auc")
        model = search.fit(train_f, train_y).best_estimator_
    else:  # a class with one row cannot be split: sklearn's default C
        model.fit(train_f, train_y)
    probs = np.zeros((len(eval_f), int(max(train_y.max(), eval_y.max())) + 1))
    probs[:, model.classes_] = model.predict_proba(eval_f)
    return {"auroc": auroc(eval_y, probs), "C": float(model[-1].C)}


def logme(f: np.ndarray, y: np.ndarray, max_iter: int = 11, tol: float = 1e-3) -> float:
    """LogME (You et al. 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer
    Learning"), by the fixed-point iteration of You et al. 2022 ("Ranking and Tuning Pre-trained
    Models", arXiv 2110.10545) as thuml/LogME's `_fit_fixed_point` does it: per class, the log
    evidence of a Bayesian linear regression of the one-hot column on f, maximised over the prior
    precision alpha and noise precision beta, averaged over rows and then over classes. Features
    are used as given (no centring), like the reference."""
    f = f.astype(np.float64)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    keep = s > 1e-10 * max(s.max(), 1.0)
    u, sigma = u[:, keep], s[keep] ** 2
    evidences = []
    for c in range(int(y.max()) + 1):
        t_col = (y == c).astype(np.float64)
        x2 = (u.T @ t_col) ** 2
        residual = (t_col ** 2).sum() - x2.sum()  # the part of y outside f's column space
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            t = alpha / beta
            gamma = (sigma / (sigma + t)).sum()
            m2 = (sigma * x2 / (t + sigma) ** 2).sum()
            res2 = (x2 / (1 + sigma / t) ** 2).sum() + residual
            alpha, beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= tol:
                break
        evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * np.log(alpha + beta * sigma).sum()
                    - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi))
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def leep(probs: np.ndarray, y: np.ndarray) -> float:
    """LEEP (Nguyen et al. 2020, "LEEP: A New Measure to Evaluate Transferability of Learned
    Representations"): the mean log-likelihood of the target labels under the "expected empirical
    predictor" sum_z P(y|z) theta(x)_z, with P(y|z) from the empirical joint of source
    probabilities and target labels. The log is taken (SFDA's code omits it)."""
    n_classes = int(y.max()) + 1
    joint = np.stack([probs[y == c].sum(0) for c in range(n_classes)], 1) / len(y)  # (Z, C)
    conditional = joint / joint.sum(1, keepdims=True).clip(EPS)  # P(y | z)
    eep = probs @ conditional  # (n, C)
    return float(np.log(eep[np.arange(len(y)), y].clip(EPS)).mean())


def nleep(f: np.ndarray, y: np.ndarray, n_components: int | None = None, variance: float = 0.8,
          seed: int = 0) -> float:
    """N-LEEP (Li et al. 2021, "Ranking Neural Checkpoints"): LEEP with the source classifier
    replaced by a Gaussian mixture fitted to the features after PCA keeping `variance` of their
    variance; the mixture's posteriors play the source probabilities. Components default to the
    number of target classes."""
    n_classes = int(y.max()) + 1
    reduced = PCA(n_components=variance, svd_solver="full", random_state=seed).fit_transform(f.astype(np.float64))
    gmm = GaussianMixture(n_components or n_classes, covariance_type="full", reg_covar=1e-4, random_state=seed)
    return leep(gmm.fit(reduced).predict_proba(reduced), y)


def nce(source: np.ndarray, y: np.ndarray) -> float:
    """NCE (Tran et al. 2019, "Transferability and Hardness of Supervised Classification Tasks"):
    minus the conditional entropy H(Y | Z) of target labels given (argmax) source labels, from
    their empirical joint distribution."""
    _, z = np.unique(source, return_inverse=True)
    joint = np.zeros((z.max() + 1, int(y.max()) + 1))
    np.add.at(joint, (z, y), 1.0 / len(y))
    conditional = joint / joint.sum(1, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(conditional[nz])).sum())


def hscore(f: np.ndarray, y: np.ndarray) -> float:
    """H-score (Bao et al. 2019, "An Information-Theoretic Approach to Transferability in Task
    Transfer Learning"): trace(pinv(cov f) @ cov g) with g(x) the mean feature of x's class, both
    covariances of centred features. A matrix product: Google's public implementation multiplies
    elementwise, which is not the paper's trace."""
    f = f.astype(np.float64) - f.mean(0)
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(0)
    cov_f, cov_g = np.cov(f, rowvar=False, bias=True), np.cov(g, rowvar=False, bias=True)
    return float(np.trace(np.linalg.pinv(cov_f, rcond=1e-15, hermitian=True) @ cov_g))


def gbc(f: np.ndarray, y: np.ndarray, gaussian: str = "spherical", dims: int | None = 64) -> float:
    """GBC (Pándy et al. 2022, "Transferability Estimation using Bhattacharyya Class Separability"):
    each class a Gaussian with its mean and per-dimension (population) variances, "diagonal", or
    their mean, "spherical"; the score is minus the sum over ordered class pairs of the
    Bhattacharyya coefficients exp(-D_B). Features are first reduced by PCA to `dims` dimensions
    (64 in the paper; None: as given).

    Spherical follows the authors' code (google-research stable_transfer/transferability/gbc.py):
    the variance is one scalar, so the log-determinant term of D_B counts it once, not once per
    dimension as the exact distance between isotropic Gaussians would. That is the convention the
    published toy values use.
    """
    f = f.astype(np.float64)
    if dims is not None:
        f = PCA(min(dims, *f.shape), svd_solver="full").fit_transform(f)
    classes = np.unique(y)
    means = [f[y == c].mean(0) for c in classes]
    variances = [f[y == c].var(0) for c in classes]
    if gaussian == "spherical":
        variances = [np.atleast_1d(v.mean()) for v in variances]
    elif gaussian != "diagonal":
        raise ValueError(f"gaussian: spherical or diagonal, not {gaussian!r}")
    total = 0.0
    for i in range(len(classes)):
        for j in range(len(classes)):
            if i != j:
                v = (variances[i] + variances[j]) / 2
                distance = (((means[i] - means[j]) ** 2 / v).sum() / 8 + 0.5 * (
                    np.log(v).sum() - 0.5 * np.log(variances[i]).sum() - 0.5 * np.log(variances[j]).sum()))
                total += np.exp(-distance)
    return float(-total)


def _unit(f: np.ndarray) -> np.ndarray:
    f = f.astype(np.float64)
    return f / np.linalg.norm(f, axis=1, keepdims=True).clip(EPS)
