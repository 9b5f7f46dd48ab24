"""Synthetic counterparts: deterministic from a seed, with the ground truth they claim."""
import numpy as np
import pytest

from medad.data import open_dataset
from medad.data.synthetic import GRADER_SCALE_PROBS, synthetic_lesion_dataset, synthetic_lidc


def test_no_data_directory_means_synthetic():
    ds = open_dataset("lidc", "train")
    assert ds.synthetic and "synthetic" in ds.display_name and ds.provenance()["kind"] == "synthetic"


def test_lidc_synthetic_is_deterministic_per_seed():
    a, b, c = synthetic_lidc("train", 3, n=12), synthetic_lidc("train", 3, n=12), synthetic_lidc("train", 4, n=12)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.grader_masks, b.grader_masks)
    assert a.checksum == b.checksum != c.checksum
    assert not np.array_equal(a.images, c.images)


def test_lidc_synthetic_splits_differ():
    assert not np.array_equal(synthetic_lidc("train", 0, n=8).images, synthetic_lidc("test", 0, n=8).images)


def test_grader_masks_are_outcomes_of_the_oracle_distribution():
    ds = synthetic_lidc("val", 1, n=20)
    for i in range(len(ds)):
        outcomes, probs = ds.oracle_distribution(i)
        assert probs.sum() == pytest.approx(1.0) and (probs >= 0).all()
        assert not outcomes[0].any()  # outcome 0 is "grader did not mark it"
        for mask in ds.grader_masks[i]:
            assert any(np.array_equal(mask, o) for o in outcomes)


def test_oracle_sampler_follows_its_probabilities():
    ds = synthetic_lidc("test", 2, n=4)
    outcomes, probs = ds.oracle_distribution(1)
    draws = ds.oracle_masks(1, 4000, np.random.default_rng(0))
    freq = np.array([np.mean([np.array_equal(d, o) for d in draws]) for o in outcomes])
    assert np.abs(freq - probs).max() < 0.03
    assert probs[1:] / probs[1:].sum() == pytest.approx(GRADER_SCALE_PROBS)


def test_faint_lesions_are_missed_more_often():
    ds = synthetic_lidc("train", 0, n=300)
    contrast, p_empty = ds.params[:, 5], ds.params[:, 6]
    assert np.corrcoef(contrast, p_empty)[0, 1] < -0.9
    marked = ds.grader_masks.reshape(300, 4, -1).any(axis=2).sum(axis=1)
    assert set(np.unique(marked)) >= {1, 2, 3, 4}  # real disagreement between graders


def test_lesion_dataset_ground_truth():
    ds = synthetic_lesion_dataset(name="toy", split="train", seed=0, n=30, classes=("normal", "a", "b"),
                                  normal_classes=("normal",), size=32, rgb=True)
    assert ds.images.shape == (30, 32, 32, 3)
    assert np.bincount(ds.labels).tolist() == [10, 10, 10]
    has_lesion = ds.masks.reshape(30, -1).any(axis=1)
    assert not has_lesion[ds.labels == 0].any() and has_lesion[ds.labels > 0].all()
    again = synthetic_lesion_dataset(name="toy", split="train", seed=0, n=30, classes=("normal", "a", "b"),
                                     normal_classes=("normal",), size=32, rgb=True)
    assert np.array_equal(ds.images, again.images)


def test_lesion_dataset_rejects_unknown_normal_class():
    with pytest.raises(ValueError, match="normal_classes"):
        synthetic_lesion_dataset(name="toy", split="train", classes=("a",), normal_classes=("b",))


def test_atlas_pairwise_disagreement_by_hand():
    from medad.atlas import pairwise_disagreement

    masks = np.zeros((2, 3, 4, 4), bool)
    masks[0, 0, :2, :2] = True           # slice 0: 4 px, 2 px inside it, and an empty mask
    masks[0, 1, :1, :2] = True
    # pairs: (0,1) IoU 2/4 -> d 0.5; (0,2) and (1,2) one empty -> d 1
    masks[1] = False                     # slice 1: all empty -> perfect agreement
    assert pairwise_disagreement(masks) == pytest.approx([(0.5 + 1 + 1) / 3, 0.0])
