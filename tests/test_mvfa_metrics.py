"""medad.metrics.anomaly (image and pooled pixel AUC, one NaN policy, the bootstrap's pixel pairs) and the
run state's array storage the MVFA units use."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medad.errors import ConfigError
from medad.metrics.anomaly import PixelPairs, image_auc, pixel_auc, pixel_auc_statistic


def test_image_auc_equals_sklearn_with_ties_and_is_nan_for_one_class():
    rng = np.random.default_rng(0)
    for _ in range(50):
        labels, scores = rng.integers(0, 2, 30), rng.integers(0, 4, 30).astype(float)  # many ties
        if len(set(labels)) == 2:
            assert image_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    # by hand: abnormal 0.9 and 0.5 against normal 0.5 and 0.1 -> pairs won 1 + 1 + 0.5 + 1 of 4
    assert image_auc([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(3.5 / 4)
    assert math.isnan(image_auc([0, 0, 0], [0.1, 0.2, 0.3]))  # undefined, not an error
    with pytest.raises(ConfigError, match="non-finite"):
        image_auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ConfigError, match="one score per label"):
        image_auc([0, 1, 1], [0.1, 0.2])


def _maps_and_masks(n=6, size=4, seed=0):
    rng = np.random.default_rng(seed)
    maps = rng.integers(0, 5, (n, size, size)).astype(float)  # ties across images
    masks = np.zeros((n, size, size), bool)
    masks[1, :2, :2] = masks[4, 1:, 2:] = masks[5, 0, 0] = True
    return maps, masks


def test_pixel_auc_pools_every_pixel_and_brings_masks_to_the_maps_size():
    maps, masks = _maps_and_masks()
    assert pixel_auc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    big = masks.repeat(2, 1).repeat(2, 2)  # masks at twice the maps' size: nearest-neighbour back to 4 x 4
    assert pixel_auc(maps, big) == pytest.approx(pixel_auc(maps, masks))
    assert math.isnan(pixel_auc(maps, np.zeros_like(masks)))  # no lesion pixel: undefined
    with pytest.raises(ConfigError, match="without masks"):
        pixel_auc(maps, None, "chest_xray")
    with pytest.raises(ConfigError, match="6 anomaly maps for 5 masks"):
        pixel_auc(maps, masks[:5])


def test_pixel_pairs_give_the_pooled_auc_of_any_resample_of_the_images():
    maps, masks = _maps_and_masks()
    pairs = PixelPairs.from_maps(maps, masks)
    assert pairs.auc() == pytest.approx(pixel_auc(maps, masks), abs=1e-12)
    # a resample that takes image 1 twice, image 4 and 0 once, the rest not at all = those images pooled
    take = [1, 1, 4, 0]
    weights = np.bincount(take, minlength=len(maps))
    assert pairs.auc(weights) == pytest.approx(roc_auc_score(masks[take].ravel(), maps[take].ravel()), abs=1e-12)
    assert math.isnan(pairs.auc(np.bincount([0, 2], minlength=6)))  # no lesion image drawn


def test_pixel_auc_rows_come_from_every_seeds_pairs_with_an_interval_inside_zero_one():
    from medad.results import rows_from_predictions

    maps, masks = _maps_and_masks(n=12, seed=1)
    masks[7:, 2:, 2:] = True
    per_seed = [PixelPairs.from_maps(maps + s * np.arange(16).reshape(4, 4), masks) for s in range(2)]
    statistic, arrays = pixel_auc_statistic(per_seed)
    row = rows_from_predictions("d", "s", "m", "pixel AUC", statistic, arrays, n_boot=200)
    assert row["value"] == pytest.approx(np.mean([p.auc() for p in per_seed]))
    assert 0.0 <= row["ci_low"] <= row["value"] <= row["ci_high"] <= 1.0 and row["seeds"] == 2
    with pytest.raises(ConfigError, match="same test images"):
        pixel_auc_statistic([per_seed[0], PixelPairs.from_maps(maps[:5], masks[:5])])


def test_run_state_keeps_unit_arrays_beside_a_small_units_json(tmp_path):
    from medad.experiment.record import RunState

    state = RunState(tmp_path)
    big = np.arange(10000, dtype=np.float64)
    value = state.unit("few_shot/a/0", lambda: {"blocks": [{"scores": {"MVFA": big}, "seed": 0}], "note": (1, 2)})
    assert np.array_equal(value["blocks"][0]["scores"]["MVFA"], big) and value["note"] == [1, 2]
    assert (tmp_path / "units.json").stat().st_size < 500  # a reference, not 10,000 numbers
    again = RunState(tmp_path)  # a new process: the unit is done, its arrays are read back
    assert again.done("few_shot/a/0")
    assert np.array_equal(again.get("few_shot/a/0")["blocks"][0]["scores"]["MVFA"], big)
    again.unit("baselines/a/None", lambda: {"x": np.ones(3)})
    assert set(json.loads((tmp_path / "units.json").read_text())) == {"few_shot/a/0", "baselines/a/None"}
    assert np.array_equal(RunState(tmp_path).get("few_shot/a/0")["blocks"][0]["scores"]["MVFA"], big)
    memory = RunState(None)  # a notebook's run: the same values, nothing written
    assert np.array_equal(memory.unit("k", lambda: {"x": np.ones(2)})["x"], np.ones(2))
