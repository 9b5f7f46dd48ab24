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
    """Sizes, channels, intensity and mask area of the measured images; ``{"images_measured": 0}`` for none."""
    if stats.empty:
        return {"images_measured": 0}
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


# ----------------------------------------------------------------------------- the LGG and endoscopy section

NEAR_BLACK = 25  # a pixel whose brightest channel is below this (0-255) is screen black, not tissue
NEAR_WHITE = 170  # on-screen text: every channel above this ...
MAX_CHROMA = 40  # ... and channels within this of each other (white/gray, not a specular highlight on red mucosa)
BOX = (0.70, 0.97, 0.03, 0.30)  # rows, cols (fractions of the frame) of the scope-position box at the lower left
BOX_FILLED = 0.9  # a frame shows the box when this share of the BOX region is screen black
MAP_SIZE = 128  # overlay maps are computed on frames resized to this, so sources of any size compare


def status_table(names, data_dir) -> pd.DataFrame:
    """Per dataset: where its archives are and how far they were checked, or why it is shown synthetic."""
    from medad.data import dataset_status, get_spec
    from medad.data.registry import describe_status

    rows = [{"dataset": name, "title": get_spec(name).title, "data used here": describe_status(dataset_status(name, data_dir))}
            for name in names]
    return pd.DataFrame(rows).set_index("dataset")


def duplicate_groups(ds: Dataset) -> list[list[int]]:
    """Indices of the samples that share a group with another sample, one list per group, largest groups first."""
    members: dict[str, list[int]] = {}
    for i, g in enumerate(ds.groups):
        members.setdefault(g, []).append(i)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: (-len(m), ds.groups[m[0]]))


def overlay_survey(images) -> dict:
    """Screen-black and on-screen-text frequency per pixel over ``images`` (RGB uint8), and which show the lower-left box.

    Returns {"black": (MAP_SIZE, MAP_SIZE) fraction of frames, "text": same, "box": bool per frame}.
    """
    from PIL import Image

    black = np.zeros((MAP_SIZE, MAP_SIZE))
    text = np.zeros((MAP_SIZE, MAP_SIZE))
    box = []
    r0, r1, c0, c1 = (int(round(f * MAP_SIZE)) for f in BOX)
    n = 0
    for image in images:
        rgb = np.asarray(Image.fromarray(image).convert("RGB").resize((MAP_SIZE, MAP_SIZE), Image.BILINEAR), dtype=np.int16)
        is_black = rgb.max(axis=2) < NEAR_BLACK
        black += is_black
        text += (rgb.min(axis=2) > NEAR_WHITE) & (rgb.max(axis=2) - rgb.min(axis=2) < MAX_CHROMA)
        box.append(is_black[r0:r1, c0:c1].mean() >= BOX_FILLED)
        n += 1
    n = max(n, 1)
    return {"black": black / n, "text": text / n, "box": np.array(box, dtype=bool)}


def overlay_by_class(ds: Dataset, n: int, seed: int) -> dict[str, dict]:
    """:func:`overlay_survey` of up to ``n`` seeded frames of each class of ``ds`` (for endoscopy_ad: one class per source)."""
    labels = ds.labels
    result = {}
    for k, cls in enumerate(ds.classes):
        idx = np.flatnonzero(labels == k)
        chosen = idx[pick(len(idx), n, seed)]
        result[cls] = overlay_survey(ds[int(i)].image for i in chosen)
    return result


def plot_overlay_maps(survey: dict[str, dict], sources: dict[str, str], title: str):
    """Per-pixel overlay frequency: one row per overlay kind, one column per source, and a last column with the
    smaller of the sources' shares (high only where every source shows the overlay). Each row has its own scale,
    shown by its colour bar."""
    import textwrap

    import matplotlib.pyplot as plt

    from medad.reports.style import WIDTH_IN

    kinds = (("black", "screen black"), ("text", "white text"))
    ncols = len(survey) + 1
    panel = (WIDTH_IN - 1.4) / ncols
    fig, axes = plt.subplots(2, ncols, figsize=(WIDTH_IN, 2 * (panel + 0.35) + 0.9), squeeze=False, layout="constrained")
    for row, (kind, what) in zip(axes, kinds):
        maps = [m[kind] for m in survey.values()] + [np.min([m[kind] for m in survey.values()], axis=0)]
        top = max(float(np.max(maps)), 0.05)
        for ax, image, name in zip(row, maps, [sources[c] for c in survey] + ["common to both"]):
            im = ax.imshow(image, vmin=0, vmax=top, cmap="magma")
            ax.set_title(name)
            ax.set_xticks([]), ax.set_yticks([])  # pixel positions say nothing here; the frame does
        row[0].set_ylabel(what)
        fig.colorbar(im, ax=row.tolist(), shrink=0.9, label="share of frames")
    fig.suptitle(textwrap.fill(f"{title} (frames resized to {MAP_SIZE}x{MAP_SIZE})", 75))
    return fig


def plot_duplicate_groups(ds: Dataset, groups: list[list[int]], max_groups: int = 5, max_members: int = 4):
    """One row per near-duplicate group: its frames side by side, each titled with its thumbnail distance to the first."""
    import textwrap

    import matplotlib.pyplot as plt

    from medad.data.near_duplicates import thumbnail
    from medad.reports.style import WIDTH_IN
    from medad.viz import show_image

    shown = groups[:max_groups]
    size = WIDTH_IN / max_members
    fig, axes = plt.subplots(max(len(shown), 1), max_members, figsize=(WIDTH_IN, (size + 0.3) * max(len(shown), 1) + 0.6),
                             squeeze=False, layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    for row, members in zip(axes, shown):
        first = None
        for ax, i in zip(row, members[:max_members]):
            s = ds[i]
            thumb = thumbnail(s.image)
            first = thumb if first is None else first
            show_image(ax, s.image, f"{s.id.rsplit('/', 1)[1][:8]}…  Δ={np.abs(thumb - first).mean():.1f}")
    fig.suptitle(textwrap.fill(f"{ds.display_name} ({ds.split}): near-duplicate groups (Δ: mean gray-level difference "
                               "of 16x16 thumbnails)", 75))
    return fig
