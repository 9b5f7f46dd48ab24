"""The early-gastric-cancer chapter's data: the STAND-IN splits as arrays, and the two shortcut checks' images.

- classification on ``endoscopy_ad`` (Kvasir-SEG polyps with masks vs HyperKvasir normal colon
  frames; its split keeps near-duplicate frames together, and ``groups`` names each image's group);
- segmentation on ``kvasir_seg`` (800/100/100; every image its own group).

Each split is read once through the run's opener, optionally cut to a seeded stratified subset
(:func:`medad.data.subsets.stratified_subset`, recorded with ``opener.note_subset``) and resized
to a square (aspect not kept, as the paper resizes to 224 x 224).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from medad.data.endoscopy_ad import OVERLAY_BOXES  # the frames' on-screen overlays (shared with the MVFA chapter)
from medad.data.subsets import stratified_subset
from medad.errors import ConfigError, DataError

CLS_DATASET = "endoscopy_ad"
SEG_DATASET = "kvasir_seg"
# How tables and figures name the stand-in data.
STANDIN = {
    CLS_DATASET: "endoscopy_ad (STAND-IN: lower-GI polyps vs normal colon frames, not gastric cancer)",
    SEG_DATASET: "kvasir_seg (STAND-IN: colon polyps, not gastric cancer)",
}
PARTS = ("classification", "segmentation")
SPLITS = ("train", "val", "test")

__all__ = ["CLS_DATASET", "SEG_DATASET", "STANDIN", "PARTS", "OVERLAY_BOXES", "resize_pair", "load_arrays", "load_data",
           "to_float", "blank_overlays", "blur_lesions", "check_parts"]


def check_parts(parts) -> tuple[str, ...]:
    parts = tuple(parts)
    if not parts or any(p not in PARTS for p in parts):
        raise ConfigError(f"parts must be among {', '.join(PARTS)}, got {list(parts)}")
    return parts


def resize_pair(image: np.ndarray, mask: np.ndarray | None, size: int, where: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB image and bool mask -> (size, size, 3) uint8 and (size, size) bool (aspect not kept, as the paper)."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise DataError(f"{where}: expected a uint8 (H, W) or (H, W, 3) image, got {image.dtype} {image.shape}")
    if mask is None:
        mask = np.zeros(image.shape[:2], dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != image.shape[:2]:
        raise DataError(f"{where}: its mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                        f"{image.shape[1]}x{image.shape[0]}; a mask must have its image's size")
    pil = Image.fromarray(image).convert("RGB").resize((size, size), Image.BILINEAR)
    small = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
    return np.asarray(pil, dtype=np.uint8), np.asarray(small) > 127


def load_arrays(ds, size: int, limit: int | None = None, seed: int = 0, progress: bool = False, opener=None) -> dict:
    """A split as arrays: images (N, S, S, 3) uint8, masks (N, S, S) bool, labels, groups, ids.

    ``limit``: a seeded subset stratified by label (None: every image); recorded with ``opener.note_subset``.
    """
    from tqdm.auto import tqdm

    labels_all = np.asarray(ds.labels)
    if ds.name == SEG_DATASET:  # every Kvasir-SEG image is a polyp (its loader labels them 0: one class)
        labels_all = np.ones(len(ds), dtype=np.int64)
    index = stratified_subset(labels_all, limit, seed)
    if opener is not None:
        how = "all" if len(index) == len(ds) else f"stratified subset (seed {seed})"
        opener.note_subset(ds, index, f"{how}, resized to {size} px")
    images, masks, groups, ids = [], [], [], []
    for i in tqdm(index, desc=f"{ds.name} {ds.split}", disable=not progress, leave=False, mininterval=5):
        s = ds[int(i)]
        im, mk = resize_pair(s.image, s.mask, size, where=str(s.id))
        images.append(im)
        masks.append(mk)
        groups.append(s.group)
        ids.append(s.id)
    return {"images": np.stack(images), "masks": np.stack(masks), "labels": labels_all[index].astype(np.int64),
            "groups": np.asarray(groups), "ids": np.asarray(ids), "dataset": ds.name, "split": ds.split}


def load_data(cfg, opener, parts=PARTS, progress: bool = True) -> dict:
    """{"cls": {split: arrays}, "seg": {split: arrays}} for the parts asked; each split opened once through ``opener``."""
    parts = check_parts(parts)
    out = {"cls": {}, "seg": {}}
    if "classification" in parts:
        limits = {"train": cfg["train_images"], "val": cfg["val_images"], "test": cfg["test_images"]}
        for split in SPLITS:
            out["cls"][split] = load_arrays(opener(CLS_DATASET, split), cfg["image_size"], limits[split], cfg["seed"],
                                            progress, opener)
            if len(np.unique(out["cls"][split]["labels"])) < 2:
                raise DataError(f"{CLS_DATASET} {split}: needs both normal and lesion images, got only label "
                                f"{int(out['cls'][split]['labels'][0])}")
    if "segmentation" in parts:
        limits = {"train": cfg["seg_train_images"], "val": cfg["seg_val_images"], "test": cfg["seg_test_images"]}
        for split in SPLITS:
            out["seg"][split] = load_arrays(opener(SEG_DATASET, split), cfg["seg_size"], limits[split], cfg["seed"],
                                            progress, opener)
    return out


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


def blank_overlays(images: np.ndarray, boxes=OVERLAY_BOXES) -> np.ndarray:
    """A copy with the on-screen overlay regions set to black."""
    out = images.copy()
    h, w = images.shape[1:3]
    for x0, y0, x1, y1 in boxes:
        out[:, int(y0 * h): int(math.ceil(y1 * h)), int(x0 * w): int(math.ceil(x1 * w))] = 0
    return out


def blur_lesions(images: np.ndarray, masks: np.ndarray, sigma_frac: float = 0.08) -> np.ndarray:
    """A copy where the (slightly dilated) lesion region is replaced by a heavy Gaussian blur of the image."""
    from scipy import ndimage

    out = images.copy()
    size = images.shape[1]
    sigma = max(1.0, sigma_frac * size)
    grow = max(1, int(round(0.03 * size)))
    for i in np.flatnonzero(masks.reshape(len(masks), -1).any(1)):
        region = ndimage.binary_dilation(masks[i], iterations=grow)
        blurred = np.stack([ndimage.gaussian_filter(images[i, :, :, c].astype(np.float32), sigma) for c in range(3)], -1)
        out[i][region] = np.clip(blurred[region], 0, 255).astype(np.uint8)
    return out
