"""Per-image segmentation and attention scores (the early-gastric-cancer chapter; usable by any binary mask task).

:func:`segmentation_scores` — pixel accuracy, IoU and Dice of the lesion class per image, the
last two through MONAI (``monai.metrics.MeanIoU`` / ``DiceMetric`` with ``reduction="none"``)::

    PA   = |P == T| / |pixels|          IoU = |P & T| / |P | T|          Dice = 2 |P & T| / (|P| + |T|)

An image whose true mask is empty has no lesion to score: MONAI (``ignore_empty=True``, its default)
gives NaN for its IoU and Dice, whatever was predicted, and :func:`medad.metrics.bootstrap.mean_statistic`
leaves such images out of a mean.

:func:`attention_scores` — how an attention map (e.g. a normalised Grad-CAM map in [0, 1]) relates to
the lesion mask: the IoU of the map thresholded at ``threshold`` with the mask (NaN when both are empty)
and the pointing game (Zhang et al., "Top-down neural attention by excitation backprop", 2018): a hit
(1.0) when the map's maximum falls inside the mask, else 0.0 (the first maximum in row-major order).
"""
from __future__ import annotations

import numpy as np

from medad.errors import ConfigError


def _pair(pred, true, what: str) -> tuple[np.ndarray, np.ndarray]:
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.shape != true.shape or pred.ndim != 3:
        raise ConfigError(f"{what}: expected two (N, H, W) arrays of the same shape, got {pred.shape} and {true.shape}")
    return pred, true


def _boolean(mask: np.ndarray, what: str) -> np.ndarray:
    if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
        raise ConfigError(f"{what} must be boolean (or 0/1) masks, got values {np.unique(mask)[:5].tolist()}")
    return mask.astype(bool)


def segmentation_scores(pred, true) -> dict[str, np.ndarray]:
    """Per image: ``pixel_accuracy``, ``iou`` and ``dice`` of the lesion class (N,), float64; see the module docstring."""
    import torch

    from medad.compat.torchvision_ops import ensure_torchvision

    pred, true = _pair(pred, true, "segmentation_scores(pred, true)")
    pred, true = _boolean(pred, "predicted masks"), _boolean(true, "true masks")
    if len(pred) == 0:
        return {k: np.zeros(0) for k in ("pixel_accuracy", "iou", "dice")}
    ensure_torchvision()
    from monai.metrics import DiceMetric, MeanIoU

    p = torch.from_numpy(pred).unsqueeze(1).float()
    t = torch.from_numpy(true).unsqueeze(1).float()
    dice = DiceMetric(include_background=True, reduction="none")(p, t).squeeze(1).double().numpy()
    iou = MeanIoU(include_background=True, reduction="none")(p, t).squeeze(1).double().numpy()
    pixel_accuracy = (pred == true).reshape(len(pred), -1).mean(1)
    return {"pixel_accuracy": pixel_accuracy, "iou": iou, "dice": dice}


def attention_scores(maps, masks, threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Per image: ``iou`` of (map >= threshold) with the mask, and ``hit`` of the pointing game (N,)."""
    maps, masks = _pair(maps, masks, "attention_scores(maps, masks)")
    masks = _boolean(masks, "lesion masks")
    if not 0 < threshold < 1:
        raise ConfigError(f"attention threshold must be in (0, 1), got {threshold!r}")
    maps = maps.astype(np.float64)
    if not np.isfinite(maps).all():
        raise ConfigError(f"attention maps hold {int((~np.isfinite(maps)).sum())} non-finite values")
    flat_map, flat_mask = maps.reshape(len(maps), -1), masks.reshape(len(masks), -1)
    on = flat_map >= threshold
    inter, union = (on & flat_mask).sum(1), (on | flat_mask).sum(1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    hit = flat_mask[np.arange(len(flat_mask)), flat_map.argmax(1)].astype(float) if len(maps) else np.zeros(0)
    return {"iou": iou, "hit": hit}
