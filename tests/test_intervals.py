"""The book's interval convention: a percentile bootstrap of any statistic over test images, seeds on one resample."""
import math

import numpy as np
import pytest

from medad.errors import ConfigError
from medad.metrics.bootstrap import bootstrap_statistic, mean_statistic
from medad.metrics.classification import accuracy, macro_f1, roc_auc


def test_an_auc_that_is_1_on_every_resample_gives_1_1():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])  # perfectly ranked: every resample with both classes has AUC 1
    est = bootstrap_statistic(roc_auc, [(labels, scores)] * 3, n_boot=200)
    assert (est.value, est.low, est.high) == (1.0, 1.0, 1.0)
    assert est.seed_sd == 0.0 and est.seeds == 3 and est.n == 6 and est.groups == 6
    # resamples that hold one class only have no AUC: they are left out and counted
    assert 150 < est.replicates < 200


def test_grouping_keeps_a_patients_images_together():
    # patient a: four images scoring 1, patient b: one image scoring 0. Drawing two patients gives a mean
    # of 1 (a, a), 0 (b, b) or 4/5 (a, b); resampling single images would give means such as 3/5 too.
    values = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    groups = np.array(["a", "a", "a", "a", "b"])
    seen = []

    def recording_mean(v):
        seen.append(round(float(np.mean(v)), 6))
        return mean_statistic(v)

    est = bootstrap_statistic(recording_mean, [values], groups=groups, n_boot=300, seed=1)
    assert set(seen[1:]) <= {0.0, 0.8, 1.0} and len(set(seen[1:])) == 3
    assert est.value == pytest.approx(0.8) and est.groups == 2 and est.low == 0.0 and est.high == 1.0
    ungrouped = []
    bootstrap_statistic(lambda v: ungrouped.append(float(np.mean(v))) or 0.0, [values], n_boot=300, seed=1)
    assert any(abs(m - 0.6) < 1e-9 for m in ungrouped)


def test_every_seed_is_scored_on_the_same_resample():
    # seed A is right on image 0 only, seed B on image 1 only: on any one resample their accuracies sum to 1,
    # so the seed average is 0.5 on every replicate; different resamples per seed would spread it
    labels = np.array([1, 0])
    est = bootstrap_statistic(accuracy, [(labels, np.array([1, 1])), (labels, np.array([0, 0]))], n_boot=500)
    assert (est.value, est.low, est.high) == (0.5, 0.5, 0.5)
    assert est.seed_sd == pytest.approx(0.0)  # both seeds have accuracy 0.5 on the whole set
    est = bootstrap_statistic(accuracy, [(labels, np.array([1, 0])), (labels, np.array([0, 1]))], n_boot=50)
    assert est.value == 0.5 and est.seed_sd == pytest.approx(math.sqrt(0.5))


def test_a_bounded_statistic_stays_in_range_and_is_deterministic():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 40)
    per_seed = [(labels, np.where(rng.random(40) < 0.9, labels, rng.integers(0, 3, 40))) for _ in range(3)]
    groups = np.repeat(np.arange(20), 2)
    one = bootstrap_statistic(macro_f1, per_seed, groups=groups, n_boot=300, seed=4)
    two = bootstrap_statistic(macro_f1, per_seed, groups=groups, n_boot=300, seed=4)
    assert one == two
    assert 0.0 <= one.low <= one.value <= one.high <= 1.0 and one.high - one.low > 0.01
    assert one.value == pytest.approx(np.mean([macro_f1(*p) for p in per_seed]))
    assert one.seed_sd == pytest.approx(np.std([macro_f1(*p) for p in per_seed], ddof=1))


def test_bad_input_is_named():
    with pytest.raises(ConfigError, match="per_seed is empty"):
        bootstrap_statistic(mean_statistic, [])
    with pytest.raises(ConfigError, match=r"one entry per test image \(3, as seed 0's first array\), got seed 1: 2"):
        bootstrap_statistic(accuracy, [(np.zeros(3), np.zeros(3)), (np.zeros(3), np.zeros(2))])
    with pytest.raises(ConfigError, match="groups has 2 entries for 3"):
        bootstrap_statistic(mean_statistic, [np.ones(3)], groups=[0, 1])
    with pytest.raises(ConfigError, match="arrays are empty"):
        bootstrap_statistic(mean_statistic, [np.array([])])
    with pytest.raises(ConfigError, match="n_boot"):
        bootstrap_statistic(mean_statistic, [np.ones(3)], n_boot=0)
