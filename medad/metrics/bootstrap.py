"""Patient-level (cluster) bootstrap confidence intervals for per-slice metrics.

Slices of one patient are correlated, so the resampling unit is the patient: each bootstrap
replicate draws as many patients as there are, with replacement, and averages the metric
over all slices of the drawn patients (a patient drawn twice counts twice). The interval
is the percentile interval of the replicates (Efron & Tibshirani, 1993, ch. 13).
NaN values (e.g. GED under the official empty-mask convention) are left out of the means.

:func:`bootstrap_statistic` is the book's interval for any number of a test set, including
ones that are not a mean over images (AUC, macro-F1) and numbers averaged over several
training seeds: the same resampling unit, every seed scored on the same resample
(see "Intervals" on the Reproducing page).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medad.errors import ConfigError


@dataclass
class Estimate:
    """A mean with its bootstrap percentile interval; ``n`` slices (non-NaN) in ``groups`` patients."""

    mean: float
    low: float
    high: float
    n: int
    groups: int

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "groups": self.groups}


def bootstrap_ci(values, groups, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> list[Estimate]:
    """Mean and patient-bootstrap CI of each column of ``values`` (n,) or (n, k), grouped by ``groups`` (n,)."""
    values = np.asarray(values, dtype=np.float64)
    squeeze = values.ndim == 1
    values = values[:, None] if squeeze else values
    groups = np.asarray(groups)
    if values.ndim != 2 or len(groups) != len(values):
        raise ConfigError(f"values {values.shape} and groups {groups.shape} must have the same length")
    if len(values) == 0:  # no slices: a mean and interval of nothing would be NaN, silently
        raise ConfigError("bootstrap_ci needs at least one value; got none (an empty test set or selection)")
    if not 0 < level < 1 or n_boot < 1:
        raise ConfigError(f"need 0 < level < 1 and n_boot >= 1, got level={level}, n_boot={n_boot}")
    _, inverse = np.unique(groups, return_inverse=True)
    n_groups = inverse.max() + 1 if len(inverse) else 0
    finite = np.isfinite(values)
    sums = np.zeros((n_groups, values.shape[1]))
    counts = np.zeros((n_groups, values.shape[1]))
    np.add.at(sums, inverse, np.where(finite, values, 0.0))
    np.add.at(counts, inverse, finite.astype(float))
    rng = np.random.default_rng(seed)
    # how often each patient is drawn in each replicate: (n_boot, n_groups)
    draws = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot) if n_groups else np.zeros((n_boot, 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = (draws @ sums) / (draws @ counts)
        means = sums.sum(0) / counts.sum(0)
    alpha = (1 - level) / 2
    out = []
    for j in range(values.shape[1]):
        col = reps[:, j][np.isfinite(reps[:, j])]
        low, high = (np.quantile(col, [alpha, 1 - alpha]) if len(col) else (np.nan, np.nan))
        out.append(Estimate(float(means[j]), float(low), float(high), int(counts[:, j].sum()), int(n_groups)))
    return out


# ----------------------------------------------------------------------------- bootstrap of any statistic over seeds


@dataclass
class SeedsEstimate:
    """A statistic over the test set, averaged over seeds, with the book's interval and the seeds' spread.

    ``value`` is the mean over seeds of the statistic on the whole test set; ``low``/``high``
    the 95% percentile interval over test-set resamples (each replicate: the statistic of every
    seed's predictions on one resample, averaged over seeds); ``seed_sd`` the standard deviation
    (ddof=1) of the seeds' whole-set values, NaN for one seed. ``replicates`` counts the resamples
    on which the statistic was defined (e.g. AUC needs both classes); only those enter the interval.
    """

    value: float
    low: float
    high: float
    seed_sd: float
    n: int
    groups: int
    seeds: int
    replicates: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def bootstrap_statistic(statistic, per_seed, groups=None, n_boot: int = 1000, level: float = 0.95,
                        seed: int = 0) -> SeedsEstimate:
    """The book's interval for any statistic of a test set: a percentile bootstrap over test images.

    ``statistic(*arrays) -> float`` is computed from per-image arrays, e.g. ``roc_auc(labels, scores)``,
    ``accuracy(labels, predictions)`` or ``mean(dice)``. ``per_seed`` holds, for each training seed,
    the tuple of arrays it is called with (one entry per test image, the same images in the same
    order for every seed; anything but a tuple counts as one array). ``groups`` (one id per image, e.g. the
    patient) makes the patient the resampling unit: a replicate draws as many patients as there are,
    with replacement, and keeps all their images. Every seed is scored on the same resample and the
    replicate is the mean over seeds, so the interval covers the test-set sampling of the seed-averaged
    number; the spread over seeds is ``seed_sd``. Each replicate value is a mean of values of the
    statistic, so the interval of a bounded statistic (AUC, accuracy, Dice) stays inside its range.
    A statistic that raises ``ConfigError`` or returns NaN on a resample (AUC with one class) leaves
    that replicate out (``replicates`` counts the rest).
    """
    runs = [tuple(np.asarray(a) for a in (arrays if isinstance(arrays, tuple) else (arrays,))) for arrays in per_seed]
    if not runs:
        raise ConfigError("bootstrap_statistic: per_seed is empty; pass one tuple of per-image arrays per seed")
    n = len(runs[0][0])
    if n == 0:
        raise ConfigError("bootstrap_statistic: the per-image arrays are empty; the test set needs at least one image")
    bad = [f"seed {s}: {len(a)}" for s, arrays in enumerate(runs) for a in arrays if len(a) != n]
    if bad:
        raise ConfigError(f"bootstrap_statistic: every per-image array must have one entry per test image "
                          f"({n}, as seed 0's first array), got {', '.join(bad)}")
    if not 0 < level < 1 or n_boot < 1:
        raise ConfigError(f"need 0 < level < 1 and n_boot >= 1, got level={level}, n_boot={n_boot}")
    groups = np.arange(n) if groups is None else np.asarray(groups)
    if len(groups) != n:
        raise ConfigError(f"bootstrap_statistic: groups has {len(groups)} entries for {n} test images")
    _, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    singletons = len(members) == n  # one image per group: a replicate is just a draw of image indices

    def score(index) -> float:
        values = []
        for arrays in runs:
            try:
                values.append(float(statistic(*(a[index] for a in arrays))))
            except ConfigError:
                return math.nan
        return float(np.mean(values))

    whole = [float(statistic(*arrays)) for arrays in runs]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(members), size=(n_boot, len(members)))
    order = np.concatenate(members)
    reps = np.array([score(order[row] if singletons else np.concatenate([members[g] for g in row])) for row in draws])
    reps = reps[np.isfinite(reps)]
    alpha = (1 - level) / 2
    low, high = np.quantile(reps, [alpha, 1 - alpha]) if len(reps) else (math.nan, math.nan)
    sd = float(np.std(whole, ddof=1)) if len(whole) > 1 else math.nan
    return SeedsEstimate(float(np.mean(whole)), float(low), float(high), sd, n, len(members), len(runs), len(reps))


def mean_statistic(values) -> float:
    """The mean of per-image values (Dice, IoU, a 0/1 hit), NaN images left out: a statistic for bootstrap_statistic."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else math.nan
