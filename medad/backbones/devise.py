r"""A zero-shot bridge from sentence embeddings to an ImageNet classifier's feature space.

DeViSE (Frome et al., "DeViSE: A Deep Visual-Semantic Embedding Model",
NeurIPS 2013) joins a pretrained image classifier and a pretrained text
model with a linear map, so that unseen class names can be recognised. Here
the map goes the other way round, text -> image, and is fitted in closed form
(ridge regression) instead of with DeViSE's hinge rank loss; no image-text
pairs are needed, only the classifier's own weights:

.. math::

    A^\star = \arg\min_A \lVert \tilde T A - W \rVert_F^2 + \lambda \lVert A_{1:d} \rVert_F^2
            = (\tilde T^\top \tilde T + \lambda I_0)^{-1} \tilde T^\top W

where each row of :math:`T \in \mathbb{R}^{n \times d}` is the unit sentence
embedding of a text about one ImageNet class, :math:`\tilde T = [T, 1]` (the
intercept is not penalised: :math:`I_0` is the identity with a zero in the
intercept's place), and the matching row of :math:`W \in \mathbb{R}^{n \times k}`
is that class's weight vector in the classifier's last layer (logit
:math:`= w_c^\top f + b_c` for the pooled image feature :math:`f`). A text
:math:`t` maps to :math:`\hat w(t) = [t, 1] A^\star`, a pseudo class vector,
and scores an image by :math:`\cos(f, \hat w(t))`. :math:`\lambda` is chosen by
5-fold cross-validation over classes (folds hold whole classes).

Texts per class (two rows each): ``"<first name>: <WordNet gloss>"`` and the
comma-joined synonyms, both from timm's ImageNet metadata.

Evaluation (:func:`heldout_retrieval`): fit on a seeded subset of classes, map
the texts of the other classes, and rank those classes' true weight vectors
by cosine: top-1 against chance ``1 / n_test``.
"""
from __future__ import annotations

import numpy as np

from medad.errors import ConfigError

LAMBDAS = (0.1, 0.3, 1.0, 3.0)


def imagenet_class_texts() -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, class index of each text, kind of each text: 0 = name + gloss, 1 = synonyms)."""
    from medad.compat.torchvision_ops import ensure_torchvision

    ensure_torchvision()
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    texts, cls, kind = [], [], []
    for c in range(info.num_classes()):
        names = [s.strip() for s in info.index_to_description(c).split(",") if s.strip()]
        gloss = info.index_to_description(c, detailed=True).split(":", 1)[1].strip()
        for k, text in enumerate((f"{names[0]}: {gloss}", ", ".join(names))):
            texts.append(text)
            cls.append(c)
            kind.append(k)
    return texts, np.array(cls), np.array(kind)


def _augment(x: np.ndarray) -> np.ndarray:
    return np.hstack([x, np.ones((len(x), 1))]).astype(np.float64)


def ridge_from_stats(gram: np.ndarray, cross: np.ndarray, lam: float) -> np.ndarray:
    """Solve the normal equations from G = X~^T X~ and B = X~^T Y (the last row/column is the intercept)."""
    if not lam > 0:
        raise ConfigError(f"ridge lambda must be > 0, got {lam!r}")
    reg = lam * np.eye(gram.shape[0])
    reg[-1, -1] = 0.0
    return np.linalg.solve(gram + reg, cross)


def fit_ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """Closed-form ridge with an unpenalised intercept: returns A of shape (d + 1, k)."""
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ConfigError(f"fit_ridge needs x (n, d) and y (n, k) with the same n, got {x.shape} and {y.shape}")
    x1 = _augment(x)
    return ridge_from_stats(x1.T @ x1, x1.T @ y.astype(np.float64), lam)


def apply_ridge(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.hstack([x, np.ones((len(x), 1))]) @ a


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def retrieval_ranks(pred: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Rank (0 = first) of the true target for each row of ``pred`` among all ``targets`` by cosine."""
    sims = _unit(pred) @ _unit(targets).T
    true = sims[np.arange(len(sims)), np.arange(len(sims))]
    return (sims > true[:, None]).sum(axis=1)


def choose_lambda(x, y, cls, lambdas=LAMBDAS, folds: int = 5, seed: int = 0) -> tuple[float, dict]:
    """λ with the best cross-validated held-out-class top-1 (ties: the larger λ).

    ``y`` holds one target row per class index (``y[c]``); folds hold whole classes. The normal
    equations of a fold are those of all rows minus the held-out rows', so each fold costs little.
    """
    classes = np.unique(cls)
    x1, t = _augment(x), y[cls].astype(np.float64)
    gram, cross = x1.T @ x1, x1.T @ t
    order = np.random.default_rng(seed).permutation(len(classes))
    hits = {float(lam): [] for lam in lambdas}
    for f in range(folds):
        held_classes = np.sort(classes[order[f::folds]])
        rows = np.flatnonzero(np.isin(cls, held_classes))
        g_fold = gram - x1[rows].T @ x1[rows]
        c_fold = cross - x1[rows].T @ t[rows]
        truth = np.searchsorted(held_classes, cls[rows])  # each row's class among the held-out ones
        targets = _unit(y[held_classes].astype(np.float64))
        for lam in hits:
            sims = _unit(x1[rows] @ ridge_from_stats(g_fold, c_fold, lam)) @ targets.T
            hits[lam].append(sims.argmax(1) == truth)
    scores = {lam: float(np.concatenate(h).mean()) for lam, h in hits.items()}
    best = max(scores, key=lambda lam: (scores[lam], lam))
    return best, scores


def fit(x: np.ndarray, cls: np.ndarray, w: np.ndarray, lambdas=LAMBDAS, seed: int = 0) -> tuple[np.ndarray, float, dict]:
    """Fit the text -> class-weight map on every row (targets ``w[cls]``): (A, chosen λ, CV scores)."""
    lam, scores = choose_lambda(x, w, cls, lambdas, seed=seed)
    return fit_ridge(x, w[cls], lam), lam, scores


def heldout_retrieval(x: np.ndarray, cls: np.ndarray, kind: np.ndarray, w: np.ndarray, n_train: int = 800,
                      seed: int = 0, lambdas=LAMBDAS) -> dict:
    """Fit on ``n_train`` seeded classes, retrieve the others' weight vectors from their texts.

    Returns top-1 / top-5 per text kind (0: name + gloss, 1: synonyms only), chance, sizes, λ.
    """
    classes = np.unique(cls)
    if not 0 < n_train < len(classes):
        raise ConfigError(f"n_train must be between 1 and {len(classes) - 1}, got {n_train}")
    perm = np.random.default_rng(seed).permutation(classes)
    train_cls, test_cls = np.sort(perm[:n_train]), np.sort(perm[n_train:])
    train = np.isin(cls, train_cls)
    a, lam, _ = fit(x[train], cls[train], w, lambdas, seed=seed)
    report = {"n_train": int(n_train), "n_test": int(len(test_cls)), "chance": 1.0 / len(test_cls),
              "lambda": lam, "seed": int(seed)}
    for k, label in ((0, "gloss"), (1, "names")):
        rows = np.flatnonzero(np.isin(cls, test_cls) & (kind == k))
        order = np.argsort(cls[rows])  # one row per test class, aligned with test_cls
        ranks = retrieval_ranks(apply_ridge(a, x[rows[order]]), w[test_cls])
        report[f"top1_{label}"] = float((ranks < 1).mean())
        report[f"top5_{label}"] = float((ranks < 5).mean())
    return report
