"""Descriptive statistics of a dataset for the data-atlas chapter.

Everything here reads a :class:`medad.data.Dataset` and returns plain tables
(pandas DataFrames) or arrays; the notebook only plots and narrates.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from medad.data.base import Dataset


def class_balance(splits: dict[str, Dataset]) -> pd.DataFrame:
    """Images per class and split (rows: class, columns: split), from labels only (no decoding)."""
    rows = {}
    for split, ds in splits.items():
        labels = ds.labels
        names = list(ds.classes) or ["(no image labels)"]
        counts = np.bincount(labels[labels >= 0], minlength=len(ds.classes)) if ds.classes else [len(ds)]
        rows[split] = pd.Series(dict(zip(names, counts)))
    table = pd.DataFrame(rows).fillna(0).astype(int)
    table["total"] = table.sum(axis=1)
    return table


def pick(n_total: int, n: int, seed: int) -> np.ndarray:
    """``n`` distinct indices out of ``n_total``, seeded and sorted (all of them when n >= n_total)."""
    if n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))


def image_statistics(ds: Dataset, n: int, seed: int) -> pd.DataFrame:
    """Per-image size, channels, intensity mean/std and mask coverage, for ``n`` seeded images."""
    records = []
    for i in pick(len(ds), n, seed):
        s = ds[int(i)]
        gray = s.image if s.image.ndim == 2 else s.image.mean(axis=2)
        records.append(
            {
                "height": s.image.shape[0],
                "width": s.image.shape[1],
                "channels": 1 if s.image.ndim == 2 else s.image.shape[2],
                "mean": float(gray.mean()),
                "std": float(gray.std()),
                "mask_fraction": float(s.mask.mean()) if s.mask is not None else np.nan,
                "class": ds.classes[s.label] if s.label is not None and ds.classes else "-",
            }
        )
    return pd.DataFrame.from_records(records)


def summarise_statistics(stats: pd.DataFrame) -> dict:
    sizes = stats.groupby(["height", "width"]).size().sort_values(ascending=False)
    return {
        "images_measured": len(stats),
        "most_common_size": f"{sizes.index[0][1]}x{sizes.index[0][0]}",
        "distinct_sizes": len(sizes),
        "channels": int(stats["channels"].mode()[0]),
        "intensity_mean": float(stats["mean"].mean()),
        "intensity_std": float(stats["std"].mean()),
        "mask_fraction": float(stats["mask_fraction"].mean()) if stats["mask_fraction"].notna().any() else np.nan,
    }


def agreement_histogram(grader_counts: np.ndarray, n_graders: int = 4) -> pd.Series:
    """Fraction of slices marked by 0..n_graders graders."""
    counts = np.bincount(grader_counts, minlength=n_graders + 1)
    return pd.Series(counts / max(counts.sum(), 1), index=pd.Index(range(n_graders + 1), name="graders who marked the slice"))


def pairwise_disagreement(grader_masks: np.ndarray) -> np.ndarray:
    """Per slice: mean 1 - IoU over the distinct grader pairs (two empty masks agree). (N,G,H,W) -> (N,)."""
    from medad.metrics.ged import pairwise_iou

    distance = 1 - pairwise_iou(grader_masks, grader_masks, empty="match").numpy()
    g = grader_masks.shape[1]
    off_diagonal = ~np.eye(g, dtype=bool)
    return distance[:, off_diagonal].mean(axis=1)
