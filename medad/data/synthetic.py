"""Synthetic counterparts of the datasets: the embedded default when no data directory is given.

Everything here is procedurally generated from a seed and is **synthetic** —
the datasets say so (``synthetic=True``, names suffixed "(synthetic)" in the
book). They exist so that every chapter runs anywhere, and because their
ground truth is known exactly, which real data never offers.

Two generators:

``synthetic_lidc``
    CT-like crops with one lesion-like blob. Each slice has a *known*
    distribution over grader masks: with probability ``p_empty`` (higher for
    faint lesions) a grader marks nothing, otherwise the grader outlines the
    blob at one of three scales (0.7, 1.0, 1.35 of its radius) with
    probabilities 0.3 / 0.4 / 0.3. The four grader masks of a slice are four
    independent draws, so grader disagreement behaves like LIDC's, and
    :meth:`SyntheticLIDC.oracle_masks` samples the true distribution (an
    oracle no real dataset has; the Probabilistic U-Net chapter uses it).

``synthetic_lesion_dataset``
    Image-level classes with lesion masks (anomaly detection, classification
    with attention supervision, segmentation): "normal" classes have no
    lesion (empty mask); every other class has blobs whose brightness,
    size and lobes depend on the class.
"""
from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np
from scipy import ndimage

from medad.data.base import ArrayDataset

SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}
DEFAULT_N = {"train": 400, "val": 100, "test": 100}
GRADER_SCALES = np.array([0.7, 1.0, 1.35])
GRADER_SCALE_PROBS = np.array([0.3, 0.4, 0.3])
N_GRADERS = 4


def _rng(name: str, split: str, seed: int) -> np.random.Generator:
    # One independent stream per (dataset, split, seed): splits never share images.
    return np.random.default_rng([seed, SPLIT_INDEX.get(split, 9), zlib.crc32(name.encode())])


def _texture(rng: np.random.Generator, size: int, smooth: float) -> np.ndarray:
    """Smooth random field in [0, 1]: tissue-like background."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), smooth)
    field -= field.min()
    return field / max(field.max(), 1e-8)


def ellipse(size: int, cy: float, cx: float, ry: float, rx: float, angle: float) -> np.ndarray:
    """Boolean filled ellipse on a size x size grid."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (u / max(rx, 0.5)) ** 2 + (v / max(ry, 0.5)) ** 2 <= 1.0


# ----------------------------------------------------------------------------- LIDC-like ambiguous lesions


class SyntheticLIDC(ArrayDataset):
    """Synthetic LIDC with a known grader-mask distribution per slice (see module docstring)."""

    def __init__(self, *, params: np.ndarray, size: int, **kwargs):
        super().__init__(**kwargs)
        self.params = params  # per slice: cy, cx, ry, rx, angle, contrast, p_empty
        self.size = size

    def oracle_distribution(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """All outcomes of one grader for slice ``index`` and their probabilities.

        Returns (masks bool (4, H, W): empty, small, medium, large; probs (4,) summing to 1).
        """
        cy, cx, ry, rx, angle, _, p_empty = self.params[self._check_index(index)]
        masks = [np.zeros((self.size, self.size), bool)]
        masks += [ellipse(self.size, cy, cx, ry * s, rx * s, angle) for s in GRADER_SCALES]
        probs = np.concatenate([[p_empty], (1 - p_empty) * GRADER_SCALE_PROBS])
        return np.stack(masks), probs

    def oracle_masks(self, index: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` independent draws from slice ``index``'s true grader-mask distribution: bool (n, H, W)."""
        masks, probs = self.oracle_distribution(index)
        return masks[rng.choice(len(probs), size=n, p=probs)]


def synthetic_lidc(split: str = "train", seed: int = 0, n: int | None = None, size: int = 64) -> SyntheticLIDC:
    """Synthetic LIDC-like crops: uint8 (size, size) images, 4 grader masks each, patients of 4 slices."""
    n = DEFAULT_N.get(split, 100) if n is None else n
    rng = _rng("lidc", split, seed)
    images = np.empty((n, size, size), np.uint8)
    graders = np.empty((n, N_GRADERS, size, size), bool)
    params = np.empty((n, 7))
    for i in range(n):
        cy, cx = rng.uniform(0.35, 0.65, 2) * size
        r = rng.uniform(0.08, 0.17) * size
        ry, rx = r * rng.uniform(0.75, 1.25), r * rng.uniform(0.75, 1.25)
        angle = rng.uniform(0, np.pi)
        contrast = rng.uniform(0.2, 1.0)
        p_empty = float(np.clip(1.0 - contrast, 0.0, 0.75))  # faint lesions are often missed
        params[i] = (cy, cx, ry, rx, angle, contrast, p_empty)
        lesion = ndimage.gaussian_filter(ellipse(size, cy, cx, ry, rx, angle).astype(float), 1.2)
        image = 0.25 + 0.35 * _texture(rng, size, 3.0) + 0.45 * contrast * lesion
        image += 0.04 * rng.standard_normal((size, size))
        images[i] = np.clip(image * 255, 0, 255).astype(np.uint8)
        outcome = rng.choice(4, size=N_GRADERS, p=np.concatenate([[p_empty], (1 - p_empty) * GRADER_SCALE_PROBS]))
        for g, k in enumerate(outcome):
            graders[i, g] = False if k == 0 else ellipse(size, cy, cx, ry * GRADER_SCALES[k - 1], rx * GRADER_SCALES[k - 1], angle)
    groups = [f"synthetic-patient-{split}-{i // 4:04d}" for i in range(n)]
    return SyntheticLIDC(
        params=params,
        size=size,
        name="lidc",
        split=split,
        classes=(),
        images=images,
        grader_masks=graders,
        groups=groups,
        synthetic=True,
        source=f"synthetic (medad.data.synthetic.synthetic_lidc, seed={seed}, n={n}, size={size})",
        citation="synthetic data generated by medad",
    )


# ----------------------------------------------------------------------------- labelled lesion images


def synthetic_lesion_dataset(
    *,
    name: str,
    split: str,
    seed: int = 0,
    n: int | None = None,
    classes: Sequence[str],
    normal_classes: Sequence[str] = (),
    size: int = 64,
    rgb: bool = False,
    citation: str = "",
    with_masks: bool = True,
) -> ArrayDataset:
    """Images with image-level classes and known lesion masks.

    Labels are balanced over ``classes`` (in a seeded order). Images of a class
    in ``normal_classes`` carry no lesion; any other class gets 1-3 blobs whose
    size, brightness (darker or brighter than the tissue) and count depend on
    the class index, so a classifier has something real to learn and the mask
    says exactly where it is.
    """
    n = DEFAULT_N.get(split, 100) if n is None else n
    unknown = set(normal_classes) - set(classes)
    if unknown:
        raise ValueError(f"normal_classes {sorted(unknown)} are not among classes {list(classes)}")
    rng = _rng(name, split, seed)
    labels = rng.permutation(np.arange(n) % len(classes))
    channels = 3 if rgb else 1
    tint = rng.uniform(0.6, 1.0, channels) if rgb else np.ones(1)
    images = np.empty((n, size, size, channels), np.uint8)
    masks = np.zeros((n, size, size), bool)
    for i, label in enumerate(labels):
        tissue = 0.3 + 0.4 * _texture(rng, size, 4.0)
        if classes[label] not in normal_classes:
            k = int(label)
            for _ in range(1 + k % 3):
                r = size * rng.uniform(0.06, 0.1) * (1 + 0.25 * (k % 2))
                blob = ellipse(size, *rng.uniform(0.25, 0.75, 2) * size, r * rng.uniform(0.7, 1.3), r, rng.uniform(0, np.pi))
                masks[i] |= blob
            sign = 1.0 if k % 2 else -1.0
            tissue = tissue + sign * 0.25 * ndimage.gaussian_filter(masks[i].astype(float), 1.0)
        tissue += 0.03 * rng.standard_normal((size, size))
        images[i] = np.clip(tissue[..., None] * tint * 255, 0, 255).astype(np.uint8)
    images = images if rgb else images[..., 0]
    return ArrayDataset(
        name=name,
        split=split,
        classes=classes,
        images=images,
        labels=labels.astype(np.int64),
        masks=masks if with_masks else None,
        synthetic=True,
        source=f"synthetic (medad.data.synthetic.synthetic_lesion_dataset, seed={seed}, n={n}, size={size})",
        citation=citation or "synthetic data generated by medad",
    )


def lesion_counterpart(name: str, classes: Sequence[str], normal_classes: Sequence[str] = (), *, size: int = 64,
                       rgb: bool = False, with_masks: bool = True, n_default: int = 64):
    """A registry entry's ``make_synthetic(split, seed, n)``: :func:`synthetic_lesion_dataset` with a fixed look."""

    def make_synthetic(split: str, seed: int = 0, n: int | None = None) -> ArrayDataset:
        return synthetic_lesion_dataset(
            name=name, split=split, seed=seed, n=n_default if n is None else n, classes=classes,
            normal_classes=normal_classes, size=size, rgb=rgb, with_masks=with_masks,
        )

    return make_synthetic
