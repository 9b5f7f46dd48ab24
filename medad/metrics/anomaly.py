"""Anomaly-detection metrics: image AUC, pooled pixel AUC, and their book intervals.

One NaN policy for both: an AUC is **undefined (NaN)** when the labels hold one class only
(a test set without abnormal images, masks without a lesion pixel): there is nothing to rank.
Anything malformed (lengths that differ, non-finite scores, maps without masks) is a
:class:`~medad.errors.ConfigError` naming what was wrong, never a silent NaN.

Pixel AUC is MVFA-AD's: one ROC curve over the pixels of every test image pooled
(official ``train_few.py`` / ``test_few.py``: ``roc_auc_score(masks.flatten(), maps.flatten())``),
the masks brought to the maps' size (nearest neighbour). For the book's interval (a bootstrap over
test images, :func:`medad.metrics.bootstrap.bootstrap_statistic`) the pooled AUC of a resample is
needed a thousand times; :class:`PixelPairs` makes that cheap and exact. For images ``i`` (with
lesion pixels) and ``j`` it counts the pixel pairs (lesion pixel of ``i``, normal pixel of ``j``)
ranked correctly, ties half: :math:`C_{ij}`. A resample that takes image ``i`` :math:`w_i` times has

.. math::

    \\mathrm{AUC}(w) = \\frac{\\sum_{ij} w_i w_j C_{ij}}{(\\sum_i w_i P_i)(\\sum_j w_j N_j)}

with :math:`P_i, N_j` the lesion and normal pixel counts; :math:`w = 1` gives the pooled AUC itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medad.errors import ConfigError


def image_auc(labels, scores) -> float:
    """ROC AUC of image scores against 0/1 labels (ties half); NaN when only one class is present.

    Computed from ranks (the Mann-Whitney form, equal to ``sklearn.metrics.roc_auc_score``): a
    bootstrap calls it thousands of times.
    """
    from scipy.stats import rankdata

    labels = np.asarray(labels).ravel()
    scores = np.asarray(scores, dtype=float).ravel()
    if len(labels) != len(scores):
        raise ConfigError(f"image AUC needs one score per label, got {len(scores)} scores for {len(labels)} labels")
    if not np.isfinite(scores).all():
        raise ConfigError(f"image AUC got {int((~np.isfinite(scores)).sum())} non-finite scores of {len(scores)}")
    if not np.isin(labels, (0, 1)).all():
        raise ConfigError(f"image AUC needs 0/1 labels, got {sorted(set(labels.tolist()))[:5]}")
    positive = labels == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)  # average ranks: a tie between a normal and an abnormal image counts half
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def masks_at(masks, size: int) -> np.ndarray:
    """Boolean masks (N, H, W) (numpy or torch) brought to ``size`` x ``size`` by nearest neighbour."""
    import torch
    from torch.nn import functional as F

    m = masks if isinstance(masks, torch.Tensor) else torch.from_numpy(np.asarray(masks))
    if m.ndim != 3:
        raise ConfigError(f"masks must be (N, H, W), got shape {tuple(m.shape)}")
    if tuple(m.shape[-2:]) == (size, size):
        return m.numpy().astype(bool) if isinstance(m, torch.Tensor) else np.asarray(m, bool)
    return F.interpolate(m[:, None].float(), size=(size, size), mode="nearest")[:, 0].numpy() > 0.5


def _check_maps(maps, masks, what: str) -> tuple[np.ndarray, np.ndarray]:
    if masks is None or maps is None:
        raise ConfigError(f"pixel AUC asked of {what or 'a dataset'} without masks; it has image labels only")
    maps = np.asarray(maps, dtype=float)
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2]:
        raise ConfigError(f"{what}: anomaly maps must be square (N, s, s), got shape {maps.shape}")
    m = masks_at(masks, maps.shape[-1])
    if len(m) != len(maps):
        raise ConfigError(f"{what}: {len(maps)} anomaly maps for {len(m)} masks")
    if not np.isfinite(maps).all():
        raise ConfigError(f"{what}: pixel AUC got {int((~np.isfinite(maps)).sum())} non-finite map values")
    return maps, m


def pixel_auc(maps, masks, dataset: str = "") -> float:
    """Pooled pixel AUC of anomaly maps (N, s, s) against masks (N, H, W); NaN when no pixel (or every pixel) is a lesion."""
    from medad.metrics.classification import roc_auc

    maps, m = _check_maps(maps, masks, dataset)
    if m.all() or not m.any():
        return math.nan
    return roc_auc(m.reshape(-1).astype(int), maps.reshape(-1))


@dataclass
class PixelPairs:
    """The pooled pixel AUC of any reweighting of the test images (see the module docstring).

    ``pairs`` (n, n): :math:`C_{ij}` (rows of images without lesion pixels are zero);
    ``positives``, ``negatives`` (n,): lesion and normal pixels per image.
    """

    pairs: np.ndarray
    positives: np.ndarray
    negatives: np.ndarray

    @classmethod
    def from_maps(cls, maps, masks, dataset: str = "") -> "PixelPairs":
        maps, m = _check_maps(maps, masks, dataset)
        n = len(maps)
        flat, lesion = maps.reshape(n, -1), m.reshape(n, -1)
        owners = np.flatnonzero(lesion.any(1))
        pos_scores = np.concatenate([flat[i][lesion[i]] for i in owners]) if len(owners) else np.zeros(0)
        pos_owner = np.repeat(np.arange(len(owners)), [int(lesion[i].sum()) for i in owners])
        pairs = np.zeros((n, n))
        for j in range(n):
            neg = np.sort(flat[j][~lesion[j]])
            if not len(neg) or not len(pos_scores):
                continue
            below = np.searchsorted(neg, pos_scores, side="left")  # normal pixels of j strictly below
            ties = np.searchsorted(neg, pos_scores, side="right") - below
            pairs[owners, j] = np.bincount(pos_owner, weights=below + 0.5 * ties, minlength=len(owners))
        return cls(pairs, lesion.sum(1).astype(float), (~lesion).sum(1).astype(float))

    @property
    def n(self) -> int:
        return len(self.positives)

    def auc(self, weights=None) -> float:
        """Pooled pixel AUC with image ``i`` counted ``weights[i]`` times (all once by default); NaN when undefined."""
        w = np.ones(self.n) if weights is None else np.asarray(weights, dtype=float)
        if w.shape != (self.n,):
            raise ConfigError(f"PixelPairs.auc: {w.shape} weights for {self.n} images")
        p, q = float(w @ self.positives), float(w @ self.negatives)
        if p == 0 or q == 0:
            return math.nan
        return float(w @ self.pairs @ w) / (p * q)

    def as_arrays(self) -> dict:
        return {"pairs": self.pairs, "positives": self.positives, "negatives": self.negatives}


def pixel_auc_statistic(per_seed: list[PixelPairs]):
    """``(statistic, per_seed_arrays)`` for :func:`medad.results.rows_from_predictions`: the pooled pixel AUC.

    Every seed scored the same n test images; each seed's per-image "array" is the keys
    ``seed * n + image`` so that the one statistic finds the seed's pairs and counts the
    resample's images (``np.bincount``) without touching a pixel.
    """
    n = per_seed[0].n
    if any(p.n != n for p in per_seed):
        raise ConfigError(f"pixel AUC over seeds: every seed must score the same test images, got {[p.n for p in per_seed]}")

    def statistic(keys) -> float:
        keys = np.asarray(keys)
        seed = int(keys[0]) // n
        return per_seed[seed].auc(np.bincount(keys - seed * n, minlength=n))

    return statistic, [(np.arange(n) + s * n,) for s in range(len(per_seed))]
