"""LIDC against the real archive (skipped, visibly, without MEDAD_DATA)."""
import numpy as np
import pytest

from medad.data import open_dataset
from medad.data.lidc import grader_count, load_arrays

pytestmark = pytest.mark.realdata


def test_real_lidc_counts_checksum_and_patient_split(real_data_dir):
    splits = {s: open_dataset("lidc", s, real_data_dir) for s in ("train", "val", "test")}
    assert sum(len(ds) for ds in splits.values()) == 15548  # as documented in shared/data/README.md
    groups = {s: set(ds.groups) for s, ds in splits.items()}
    assert sum(len(g) for g in groups.values()) == 875
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"]) and not (groups["val"] & groups["test"])
    assert splits["train"].checksum == "af7c6954d0db0e2bd2bc955d8a0eebbd3077e27965ba0ef354bd3aa6dd15d1fc"
    assert [len(splits[s]) for s in ("train", "val", "test")] == [10859, 2161, 2528]


def test_real_lidc_pairing_and_grader_agreement(real_data_dir):
    ds = open_dataset("lidc", "val", real_data_dir)
    idx = np.random.default_rng(0).choice(len(ds), 400, replace=False)
    masks = []
    for i in idx:
        s = ds[int(i)]
        assert s.image.shape == (128, 128) and s.grader_masks.shape == (4, 128, 128)
        # image and masks come from the same nodule folder and slice file
        assert all(m.replace("/mask-", "/images/").startswith(s.id.rsplit("/images/", 1)[0]) for m in ds.entries[int(i)].masks)
        assert all(m.endswith(s.id.rsplit("/", 1)[1]) for m in ds.entries[int(i)].masks)
        masks.append(s.grader_masks)
    frac = np.bincount(grader_count(np.stack(masks)), minlength=5) / len(masks)
    # README, measured on a sample: 0: 0.4%, 1: 32%, 2: 19%, 3: 18%, 4: 30%
    assert frac[0] < 0.03 and 0.2 < frac[1] < 0.45 and 0.15 < frac[4] < 0.45


def test_real_lidc_arrays_match_samples(real_data_dir):
    ds = open_dataset("lidc", "test", real_data_dir)
    arrays = load_arrays(ds, progress=False)
    assert arrays["images"].shape == (2528, 128, 128)
    for i in (0, 1000, 2527):
        assert np.array_equal(arrays["images"][i], ds[i].image)
        assert np.array_equal(arrays["grader_masks"][i], ds[i].grader_masks)
