"""Segmentation and attention metrics (medad.metrics.segmentation) and the EGC chapter's tidy rows, on hand-checked cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medad.errors import ConfigError
from medad.metrics.segmentation import attention_scores, segmentation_scores
from medad.train import egc_evaluation as V


def test_segmentation_scores_by_hand():
    true = np.zeros((3, 4, 4), bool)
    true[0, :2, :2] = True          # 4 lesion pixels
    true[1, 0, 0] = True
    pred = np.zeros((3, 4, 4), bool)
    pred[0, :2, :3] = True          # 6 predicted, 4 of them right: IoU 4/6, Dice 8/10, 14 of 16 pixels right
    pred[2, 3, 3] = True            # image 2 has no lesion: IoU and Dice undefined (NaN), pixel accuracy 15/16
    s = segmentation_scores(pred, true)
    np.testing.assert_allclose(s["pixel_accuracy"], [14 / 16, 15 / 16, 15 / 16])
    np.testing.assert_allclose(s["iou"], [4 / 6, 0.0, np.nan], rtol=1e-6)   # image 1: lesion missed -> 0
    np.testing.assert_allclose(s["dice"], [8 / 10, 0.0, np.nan], rtol=1e-6)
    assert s["dice"].dtype == np.float64
    assert all(len(v) == 0 for v in segmentation_scores(np.zeros((0, 2, 2), bool), np.zeros((0, 2, 2), bool)).values())


def test_segmentation_scores_refuse_bad_input():
    with pytest.raises(ConfigError, match="same shape"):
        segmentation_scores(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 5), bool))
    with pytest.raises(ConfigError, match=r"\(N, H, W\)"):
        segmentation_scores(np.zeros((4, 4), bool), np.zeros((4, 4), bool))
    with pytest.raises(ConfigError, match="boolean"):
        segmentation_scores(np.full((1, 2, 2), 0.7), np.zeros((1, 2, 2), bool))


def test_attention_scores_by_hand():
    masks = np.zeros((3, 4, 4), bool)
    masks[:2, :2, :2] = True
    maps = np.zeros((3, 4, 4))
    maps[0, :2, :] = 1.0      # covers the mask and as much outside: IoU 4/8, maximum inside
    maps[1, 3, 3] = 1.0       # maximum outside, no overlap
    maps[2, 0, 0] = 0.4       # no lesion, nothing above the threshold: IoU undefined; maximum outside the (empty) mask
    s = attention_scores(maps, masks, 0.5)
    np.testing.assert_allclose(s["iou"], [0.5, 0.0, np.nan])
    np.testing.assert_allclose(s["hit"], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(attention_scores(maps, masks, 0.3)["iou"][2], 0.0)  # now one pixel is on: IoU 0
    with pytest.raises(ConfigError, match="threshold"):
        attention_scores(maps, masks, 1.5)
    with pytest.raises(ConfigError, match="non-finite"):
        attention_scores(np.full((1, 2, 2), np.nan), np.ones((1, 2, 2), bool))


def _evaluation(pred, prob, lesion_index, iou, hit, blurred):
    labels = np.array([0, 0, 1, 1])
    return {"labels": labels, "pred": np.asarray(pred), "prob": np.asarray(prob, float), "pred_blanked": np.asarray(pred),
            "lesion_index": np.asarray(lesion_index), "attention_iou": np.asarray(iou, float),
            "pointing_game": np.asarray(hit, float), "prob_blurred": np.asarray(blurred, float)}


def test_classification_rows_average_seeds_and_keep_intervals_in_range():
    seeds = [_evaluation([0, 1, 1, 1], [0.1, 0.6, 0.9, 0.8], [2, 3], [0.5, np.nan], [1, 0], [0.7, 0.2]),
             _evaluation([0, 0, 1, 1], [0.2, 0.3, 0.9, 0.7], [2, 3], [0.3, 0.1], [1, 1], [0.4, 0.6])]
    assert V.classifier_scores(seeds[0])["accuracy"] == 0.75 and V.classifier_scores(seeds[1])["accuracy"] == 1.0
    assert V.classifier_scores(seeds[0])["attention_iou"] == 0.5  # the NaN image is left out
    assert V.classifier_scores(seeds[1])["recall_lesion_blurred"] == 0.5
    test = {"groups": np.array(["a", "a", "b", "c"])}  # images 0 and 1 are near-duplicates: resampled together
    rows = {r["metric"]: r for r in V.classification_rows({"gain": ("GAIN (x)", seeds)}, test, n_boot=200, seed=0)}
    assert set(rows) == set(V.CLS_METRICS)
    acc = rows["accuracy"]
    assert acc["value"] == pytest.approx(0.875) and acc["seeds"] == 2 and acc["n"] == 4
    assert acc["seed_sd"] == pytest.approx(np.std([0.75, 1.0], ddof=1))
    assert rows["attention_iou"]["n"] == 2 and rows["attention_iou"]["value"] == pytest.approx((0.5 + 0.2) / 2)
    for r in rows.values():  # bounded metrics: the interval never leaves [0, 1]
        assert 0.0 <= r["ci_low"] <= r["value"] + 1e-12 and r["value"] - 1e-12 <= r["ci_high"] <= 1.0, r
    with pytest.raises(ConfigError, match="different test images"):
        V.classification_rows({"gain": ("GAIN", [seeds[0], {**seeds[1], "lesion_index": np.array([3])}])}, test, 100, 0)


def test_paired_differences_rank_variants_on_the_same_images():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, 60)  # hard and easy images: separate intervals overlap, the pairing removes that spread

    def runs(*arrays):
        return [{"iou": a, "dice": a, "pixel_accuracy": a} for a in arrays]

    scores = {"unet": runs(base, base + 0.01),
              "ca-unet": runs(base + 0.05, base + 0.06),                 # better on every image by 0.05
              "unet+cbam": runs(base + rng.normal(0, 0.05, 60), base)}  # noise around U-Net
    groups = np.arange(60)
    rows = {r["method"]: r for r in V.paired_differences(scores, groups, "unet", n_boot=500) if r["metric"] == "dice"}
    ca = rows["CA-U-Net minus U-Net"]
    assert ca["value"] == pytest.approx(0.05) and ca["ci_low"] > 0 and ca["seeds"] == 2 and ca["n"] == 60
    assert ca["seed_sd"] == pytest.approx(0.0, abs=1e-12)  # seed k minus seed k: 0.05 both times
    cbam = rows["U-Net + CBAM minus U-Net"]
    assert cbam["ci_low"] < 0 < cbam["ci_high"]
    assert V.paired_differences({"ca-unet": scores["ca-unet"]}, groups, "unet") == []  # no reference: no rows
    with pytest.raises(ConfigError, match="as many seeds"):
        V.paired_differences({"unet": scores["unet"], "ca-unet": scores["ca-unet"][:1]}, groups, "unet")


class _Everywhere(torch.nn.Module):
    """A 'segmenter' that calls every pixel a lesion."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.stack([torch.zeros_like(x[:, 0]), torch.ones_like(x[:, 0])], 1) + self.w


def test_two_stage_scores_missed_lesions_as_zero_and_flags_normals():
    masks = np.zeros((4, 8, 8), bool)
    masks[2, :4, :4] = True   # 16 of 64 pixels
    masks[3, :2, :2] = True
    test = {"images": np.zeros((4, 8, 8, 3), np.uint8), "masks": masks, "labels": np.array([0, 0, 1, 1]),
            "groups": np.array(["n0", "n1", "p0", "p1"])}
    prob = np.array([0.9, 0.1, 0.8, 0.2])  # a normal image called a lesion; lesion image 3 missed
    out = V.two_stage(prob, _Everywhere(), test, 8)
    np.testing.assert_allclose(out["two_stage_dice_lesion"], [2 * 16 / (64 + 16), 0.0])
    np.testing.assert_allclose(out["two_stage_normal_flagged"], [1.0, 0.0])
    rows = V.pipeline_rows(out, test, "GAIN then everywhere", n_boot=100, seed=0)
    assert [r["n"] for r in rows] == [2, 2] and rows[1]["value"] == 0.5
