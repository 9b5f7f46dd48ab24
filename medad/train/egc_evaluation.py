"""Test evaluation of the early-gastric-cancer chapter: per-image arrays per trained model, then tidy rows.

Every number of the chapter's table comes from per-image arrays of each training seed through
:func:`medad.results.rows_from_predictions` (the book's interval convention: the mean over seeds
of the statistic on the whole test set, a 95% percentile bootstrap over test images with every
seed scored on the same resample, near-duplicate groups of ``endoscopy_ad`` kept together, and the
seeds' standard deviation in ``seed_sd``):

- classification (decision: lesion probability >= 0.5): accuracy, precision, recall, specificity,
  F1, ROC AUC on every test image; on the lesion images with a mask: attention IoU and pointing
  game of the lesion class's Grad-CAM map (``pytorch_grad_cam`` on the last stage,
  :mod:`medad.metrics.segmentation`), and the two shortcut checks (accuracy with the on-screen
  overlays blanked, on every image; the lesion probability and recall with the lesion blurred away);
- segmentation: pixel accuracy, IoU and Dice per Kvasir-SEG test image (MONAI), and each variant
  minus U-Net on the same images (seed k of the variant paired with seed k of U-Net; the mean over
  seeds is the difference of the two networks' means, and ``seed_sd`` the spread of that difference);
- the two-stage pipeline: classify (GAIN, first seed), segment what is called a lesion (CA-U-Net,
  first seed); Dice on the lesion images (0 when missed) and the fraction of normal images with
  any predicted lesion pixel.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from medad.errors import ConfigError
from medad.metrics.bootstrap import mean_statistic
from medad.metrics.classification import accuracy, binary_report, roc_auc
from medad.metrics.segmentation import attention_scores, segmentation_scores
from medad.models.gain import LESION, AttentionClassifier
from medad.train.egc_data import CLS_DATASET, SEG_DATASET, STANDIN
from medad.train.egc_tasks import device_of, lesion_probability, predict_masks

SEG_METHODS = {"unet": "U-Net", "unet+cbam": "U-Net + CBAM", "unet+aspp": "U-Net + ASPP", "ca-unet": "CA-U-Net"}
PAIRED_SETTING = "test, paired difference to U-Net"
PIPELINE_SETTING = "test, two-stage"
SEG_METRICS = ("pixel_accuracy", "iou", "dice")


def _binary(metric: str):
    def statistic(labels, predictions) -> float:
        return binary_report(labels, predictions)[metric]
    statistic.__name__ = metric
    return statistic


def _lesion_recall(prob_blurred) -> float:
    return mean_statistic(np.asarray(prob_blurred) >= 0.5)


# metric -> (statistic, the per-image arrays of one seed's evaluation it takes, measured on lesion images only)
CLS_STATISTICS = {
    "accuracy": (accuracy, lambda e: (e["labels"], e["pred"]), False),
    "precision": (_binary("precision"), lambda e: (e["labels"], e["pred"]), False),
    "recall": (_binary("recall"), lambda e: (e["labels"], e["pred"]), False),
    "specificity": (_binary("specificity"), lambda e: (e["labels"], e["pred"]), False),
    "f1": (_binary("f1"), lambda e: (e["labels"], e["pred"]), False),
    "auc": (roc_auc, lambda e: (e["labels"], e["prob"]), False),
    "attention_iou": (mean_statistic, lambda e: (e["attention_iou"],), True),
    "pointing_game": (mean_statistic, lambda e: (e["pointing_game"],), True),
    "accuracy_overlays_blanked": (accuracy, lambda e: (e["labels"], e["pred_blanked"]), False),
    "p_lesion_clean": (mean_statistic, lambda e: (e["prob"][e["lesion_index"]],), True),
    "p_lesion_lesion_blurred": (mean_statistic, lambda e: (e["prob_blurred"],), True),
    "recall_lesion_blurred": (_lesion_recall, lambda e: (e["prob_blurred"],), True),
}
CLS_METRICS = tuple(CLS_STATISTICS)
LESION_ONLY_METRICS = tuple(m for m, (_, _, lesion) in CLS_STATISTICS.items() if lesion)


# ----------------------------------------------------------------------------- classifiers


class _TrunkToLogits(torch.nn.Module):
    """The trainable part of a classifier as a module of the trunk output (what Grad-CAM is run on)."""

    def __init__(self, model: AttentionClassifier):
        super().__init__()
        self.model = model

    def forward(self, z):
        return self.model.head(self.model.features_from_trunk(z))


def grad_cam_maps(model: AttentionClassifier, trunk: torch.Tensor, size: int, batch_size: int = 32) -> np.ndarray:
    """Grad-CAM (pytorch_grad_cam) of the lesion class on the last stage: (N, size, size) in [0, 1], float32."""
    from medad.compat.torchvision_ops import ensure_torchvision

    ensure_torchvision()
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model.eval()
    maps = [np.zeros((0, size, size), np.float32)]
    with GradCAM(model=_TrunkToLogits(model), target_layers=[model.feature_layer]) as cam:
        for s in range(0, len(trunk), batch_size):
            z = trunk[s: s + batch_size].to(device_of(model))
            small = cam(input_tensor=z, targets=[ClassifierOutputTarget(LESION)] * len(z))  # at the trunk's grid
            up = F.interpolate(torch.from_numpy(small).float().unsqueeze(1), size=(size, size), mode="bilinear",
                               align_corners=False).squeeze(1)
            low = up.flatten(1).amin(1).view(-1, 1, 1)
            maps.append(((up - low) / (up.flatten(1).amax(1).view(-1, 1, 1) - low + 1e-7)).numpy())
    return np.concatenate(maps)


def evaluate_classifier(model: AttentionClassifier, test: dict, trunks: dict, threshold: float) -> dict:
    """Per-image arrays of one trained classifier on the test split (and its two shortcut-check versions)."""
    labels = np.asarray(test["labels"])
    prob = lesion_probability(model, trunks["test"])
    lesion = (labels == LESION) & test["masks"].reshape(len(labels), -1).any(1)
    maps = grad_cam_maps(model, trunks["test"][torch.from_numpy(lesion)], test["images"].shape[1])
    attention = attention_scores(maps, test["masks"][lesion], threshold)
    return {"labels": labels, "prob": prob, "pred": (prob >= 0.5).astype(int),
            "pred_blanked": (lesion_probability(model, trunks["test_blanked"]) >= 0.5).astype(int),
            "lesion_index": np.flatnonzero(lesion), "maps": maps, "attention_iou": attention["iou"],
            "pointing_game": attention["hit"], "prob_blurred": lesion_probability(model, trunks["test_blurred"])[lesion]}


def classifier_scores(evaluation: dict) -> dict[str, float]:
    """One seed's whole-test-set value of every classification metric (what ``per_seed`` in provenance keeps)."""
    return {metric: float(stat(*arrays(evaluation))) for metric, (stat, arrays, _) in CLS_STATISTICS.items()}


def classification_rows(units: dict[str, tuple[str, list[dict]]], test: dict, n_boot: int, seed: int) -> list[dict]:
    """Tidy rows of every classifier: ``units`` maps a unit to (its label, one evaluation per training seed)."""
    from medad.results import rows_from_predictions

    groups = np.asarray(test["groups"])
    rows = []
    for unit, (label, evaluations) in units.items():
        lesion_index = evaluations[0]["lesion_index"]
        if any(not np.array_equal(e["lesion_index"], lesion_index) for e in evaluations):
            raise ConfigError(f"{unit}: the seeds were evaluated on different test images")
        for metric, (stat, arrays, lesion_only) in CLS_STATISTICS.items():
            rows.append(rows_from_predictions(STANDIN[CLS_DATASET], "test", label, metric, stat,
                                              [arrays(e) for e in evaluations],
                                              groups=groups[lesion_index] if lesion_only else groups,
                                              n_boot=n_boot, seed=seed))
    return rows


# ----------------------------------------------------------------------------- segmenters


def evaluate_segmenter(model, test: dict, size: int) -> dict[str, np.ndarray]:
    """Per-image pixel accuracy, IoU and Dice of one trained segmenter on the test split."""
    return segmentation_scores(*predict_masks(model, test, size))


def segmentation_rows(seg_scores: dict[str, list[dict]], test: dict, n_boot: int, seed: int) -> list[dict]:
    """Tidy rows of every segmenter: ``seg_scores`` maps a variant to one per-image score dict per training seed."""
    from medad.results import rows_from_predictions

    groups = np.asarray(test["groups"])
    return [rows_from_predictions(STANDIN[SEG_DATASET], "test", SEG_METHODS[variant], metric, mean_statistic,
                                  [(r[metric],) for r in runs], groups=groups, n_boot=n_boot, seed=seed)
            for variant, runs in seg_scores.items() for metric in SEG_METRICS]


def paired_differences(seg_scores: dict[str, list[dict]], groups, reference: str = "unet", n_boot: int = 1000,
                       seed: int = 0) -> list[dict]:
    """Each variant minus ``reference`` on the same test images (IoU, Dice): the paired bootstrap of the module docstring.

    Resampling the images keeps the pairing, so the interval is much narrower than comparing two
    separate intervals, and one that excludes 0 ranks the two networks on this test set.
    """
    from medad.results import rows_from_predictions

    if reference not in seg_scores:
        return []
    base = seg_scores[reference]
    rows = []
    for variant, runs in seg_scores.items():
        if variant == reference:
            continue
        if len(runs) != len(base):
            raise ConfigError(f"paired differences need as many seeds of {variant} as of {reference}, "
                              f"got {len(runs)} and {len(base)}")
        for metric in ("iou", "dice"):
            rows.append(rows_from_predictions(STANDIN[SEG_DATASET], PAIRED_SETTING,
                                              f"{SEG_METHODS[variant]} minus {SEG_METHODS[reference]}", metric,
                                              mean_statistic, [(r[metric] - b[metric],) for r, b in zip(runs, base)],
                                              groups=np.asarray(groups), n_boot=n_boot, seed=seed))
    return rows


def seg_seed_means(seg_scores: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Per variant and seed: the test mean of each segmentation metric (the seed table of the chapter)."""
    return {variant: [{m: mean_statistic(v) for m, v in run.items()} for run in runs] for variant, runs in seg_scores.items()}


# ----------------------------------------------------------------------------- the two-stage pipeline


def _true_masks(test: dict, size: int) -> np.ndarray:
    masks = torch.from_numpy(np.ascontiguousarray(test["masks"])).unsqueeze(1).float()
    return F.interpolate(masks, size=(size, size), mode="nearest").squeeze(1).bool().numpy()


def two_stage(prob: np.ndarray, segmenter, test: dict, size: int) -> dict:
    """Classify, then segment what is called a lesion; per-image Dice on lesion images (0 if missed), flags on normals."""
    called = prob >= 0.5
    index = np.flatnonzero(called)
    pred_called, _ = predict_masks(segmenter, test, size, index=index)
    n = len(prob)
    pred = np.zeros((n, size, size), dtype=bool)
    pred[index] = pred_called
    true = _true_masks(test, size)
    lesion = test["labels"] == LESION
    dice = np.zeros(int(lesion.sum()))
    hit = called[lesion]
    if hit.any():
        dice[hit] = segmentation_scores(pred[lesion][hit], true[lesion][hit])["dice"]
    dice = np.nan_to_num(dice, nan=0.0)
    flagged = pred[~lesion].reshape(int((~lesion).sum()), -1).any(1).astype(float)
    return {"two_stage_dice_lesion": dice, "two_stage_normal_flagged": flagged, "pred": pred, "true": true,
            "lesion": lesion}


def pipeline_rows(pipeline: dict, test: dict, method: str, n_boot: int, seed: int) -> list[dict]:
    from medad.results import rows_from_predictions

    groups, lesion = np.asarray(test["groups"]), pipeline["lesion"]
    return [rows_from_predictions(STANDIN[CLS_DATASET], PIPELINE_SETTING, method, metric, mean_statistic,
                                  [(pipeline[metric],)], groups=groups[part], n_boot=n_boot, seed=seed)
            for metric, part in (("two_stage_dice_lesion", lesion), ("two_stage_normal_flagged", ~lesion))]
