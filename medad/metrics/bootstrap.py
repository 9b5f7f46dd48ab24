"""Patient-level (cluster) bootstrap confidence intervals for per-slice metrics.

Slices of one patient are correlated, so the resampling unit is the patient: each bootstrap
replicate draws as many patients as there are, with replacement, and averages the metric
over all slices of the drawn patients (a patient drawn twice counts twice). The interval
is the percentile interval of the replicates (Efron & Tibshirani, 1993, ch. 13).
NaN values (e.g. GED under the official empty-mask convention) are left out of the means.
"""
from __future__ import annotations

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
