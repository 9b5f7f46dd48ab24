"""medad.atlas's LGG/endoscopy helpers: near-duplicate groups, overlay maps and the box detector, the status table."""
from __future__ import annotations

import numpy as np

from medad import atlas
from medad.data import open_dataset
from medad.data.base import ArrayDataset


def frame(box: bool, text_row: int | None = None, size: int = 64) -> np.ndarray:
    image = np.full((size, size, 3), (180, 90, 70), np.uint8)  # reddish mucosa: neither black nor white
    if box:
        r0, r1, c0, c1 = (int(f * size) for f in atlas.BOX)
        image[r0 - 2:, : c1 + 2] = 0
    if text_row is not None:
        image[text_row, 2:20] = 235
    return image


def test_overlay_survey_finds_the_box_and_the_text():
    survey = atlas.overlay_survey([frame(True, 10), frame(True), frame(False, 10), frame(False)])
    assert survey["box"].tolist() == [True, True, False, False]
    m = atlas.MAP_SIZE
    assert survey["black"][int(0.9 * m), int(0.1 * m)] == 0.5 and survey["black"][m // 2, m // 2] == 0
    row = int(10 / 64 * m)
    assert survey["text"][row - 1:row + 2, int(0.1 * m)].max() == 0.5 and survey["text"][m // 2, m // 2] == 0


def test_overlay_by_class_samples_each_class():
    images = np.stack([frame(True)] * 3 + [frame(False)] * 5)
    ds = ArrayDataset(name="t", split="train", classes=("normal", "polyp"), images=images, labels=np.array([0, 0, 0, 1, 1, 1, 1, 1]))
    survey = atlas.overlay_by_class(ds, n=4, seed=0)
    assert len(survey["normal"]["box"]) == 3 and survey["normal"]["box"].all()
    assert len(survey["polyp"]["box"]) == 4 and not survey["polyp"]["box"].any()


def test_duplicate_groups_lists_shared_groups_largest_first():
    ds = ArrayDataset(name="t", split="train", classes=(), images=np.zeros((6, 4, 4), np.uint8), groups=["a", "b", "a", "c", "b", "b"])
    assert atlas.duplicate_groups(ds) == [[1, 4, 5], [0, 2]]


def test_status_table_says_synthetic_without_a_data_directory():
    table = atlas.status_table(["lgg_brain_ad", "endoscopy_ad"], None)
    assert table["data used here"].tolist() == ["synthetic (no data directory given)"] * 2
    assert open_dataset("lgg_brain_ad", "test", n=4).synthetic
