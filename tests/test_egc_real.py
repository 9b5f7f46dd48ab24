"""Early-gastric-cancer chapter on the real archives (MEDAD_DATA): the arrays the experiment trains on."""
from __future__ import annotations

import os

import numpy as np
import pytest

from medad.data import open_dataset
from medad.train import egc_data as E

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not os.environ.get("MEDAD_DATA"), reason="MEDAD_DATA is not set: real-archive tests need the data directory (../shared/data in CI)"),
]


def test_classification_arrays_have_masks_for_polyps_only():
    ds = open_dataset("endoscopy_ad", "test", os.environ["MEDAD_DATA"])
    arr = E.load_arrays(ds, 64, limit=40, seed=0)
    assert arr["images"].shape == (len(arr["labels"]), 64, 64, 3) and arr["images"].dtype == np.uint8
    has_mask = arr["masks"].reshape(len(arr["masks"]), -1).any(1)
    assert set(np.unique(arr["labels"])) == {0, 1}
    np.testing.assert_array_equal(has_mask, arr["labels"] == 1)  # every polyp has a mask, no normal frame does


def test_segmentation_split_is_kvasir_800_100_100_and_all_polyps():
    sizes = {split: len(open_dataset("kvasir_seg", split, os.environ["MEDAD_DATA"])) for split in ("train", "val", "test")}
    assert sizes == {"train": 800, "val": 100, "test": 100}
    arr = E.load_arrays(open_dataset("kvasir_seg", "val", os.environ["MEDAD_DATA"]), 32, limit=8)
    assert (arr["labels"] == 1).all() and arr["masks"].reshape(8, -1).any(1).all()


def test_overlay_boxes_cover_the_scope_box_of_real_frames():
    # the lower-left scope-position box is black in most HyperKvasir / Kvasir frames: blanking it changes little there,
    # while the frame's centre is bright tissue
    ds = open_dataset("endoscopy_ad", "val", os.environ["MEDAD_DATA"])
    arr = E.load_arrays(ds, 64, limit=30, seed=1)
    box = arr["images"][:, 48:, :18].astype(float).mean()
    centre = arr["images"][:, 24:40, 24:40].astype(float).mean()
    assert box < 0.5 * centre
