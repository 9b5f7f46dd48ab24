"""Seeded subsets of a split, written once for every chapter.

:func:`stratified_subset` keeps the class proportions of a split (each class gets
``round(n * class share)`` items, at least one), draws them with a NumPy generator (a seed or a
``Generator`` the caller already holds), and returns sorted indices, so a subset is the same set
whatever order the loader lists its items in. ``n=None`` (or ``n`` at least the pool) keeps all.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from medad.errors import ConfigError


def stratified_subset(labels, n: int | None, rng: int | np.random.Generator = 0,
                      exclude: Sequence[int] = ()) -> np.ndarray:
    """Sorted indices of about ``n`` items of ``labels`` (minus ``exclude``) in their class proportions."""
    labels = np.asarray(labels)
    if n is not None and (not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1):
        raise ConfigError(f"a subset size must be a whole number >= 1 (or None for all), got {n!r}")
    pool = np.setdiff1d(np.arange(len(labels)), np.asarray(exclude, dtype=int))
    if n is None or n >= len(pool):
        return np.sort(pool)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    picked = []
    for c in np.unique(labels[pool]):
        idx = pool[labels[pool] == c]
        k = max(1, int(round(n * len(idx) / len(pool))))
        picked.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(picked))
