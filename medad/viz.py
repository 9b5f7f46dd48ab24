"""Plotting helpers shared by the chapters: image grids with mask overlays and grader outlines.

Sizes and type follow the book's figure style (:mod:`medad.reports.style`): a grid is as wide as
the page's column, whatever its number of columns, and its titles are 10 pt.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

GRADER_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4")


def show_image(ax, image: np.ndarray, title: str = "") -> None:
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
    ax.set_title(title)
    ax.axis("off")


def overlay_mask(ax, mask: np.ndarray | None, colour: str = "#ffd700", alpha: float = 0.35) -> None:
    """Fill a boolean mask in translucent colour and outline its edge."""
    if mask is None or not mask.any():
        return
    rgba = np.zeros(mask.shape + (4,))
    rgba[mask] = plt.matplotlib.colors.to_rgba(colour, alpha)
    ax.imshow(rgba)
    ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=0.8)


def outline_masks(ax, masks: np.ndarray, colours: Sequence[str] = GRADER_COLOURS) -> None:
    """Outline several masks (e.g. the graders') in distinct colours."""
    for mask, colour in zip(masks, colours):
        if mask.any():
            ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.0)


def sample_grid(samples, class_names: Sequence[str] = (), title: str = "", ncols: int | None = None):
    """A grid of samples at the column's width, masks overlaid (grader masks outlined when a sample has them).

    Without ``ncols``, at most 6 columns and every row full where possible (8 samples: 2 rows of 4).
    """
    from medad.reports.style import WIDTH_IN

    samples = list(samples)
    if ncols is None:
        ncols = int(np.ceil(len(samples) / max(1, int(np.ceil(len(samples) / 6)))))
    ncols = max(1, ncols)
    nrows = max(1, int(np.ceil(len(samples) / ncols)))
    size = WIDTH_IN / ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(WIDTH_IN, (size + 0.25) * nrows + (0.4 if title else 0)),
                             squeeze=False, layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, s in zip(axes.ravel(), samples):
        label = class_names[s.label] if (s.label is not None and class_names) else ""
        show_image(ax, s.image, label)
        if s.grader_masks is not None:
            outline_masks(ax, s.grader_masks)
        else:
            overlay_mask(ax, s.mask)
    if title:
        fig.suptitle(title)
    return fig
