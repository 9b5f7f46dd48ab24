"""GED, sample diversity, Hungarian-matched IoU and the patient bootstrap (medad.metrics)."""
import numpy as np
import pytest
import torch

from medad.errors import ConfigError
from medad.metrics.bootstrap import bootstrap_ci
from medad.metrics.ged import (
    EMPTY_CONVENTIONS, _gram, distance_matrices, ged, ged_from_distances, ged_reference, hungarian_iou, pairwise_iou,
    sample_diversity,
)


def masks(*rows):
    """Tiny 1 x W masks from strings like '1100' -> bool (len(rows), 1, W)."""
    return np.array([[[c == "1" for c in r]] for r in rows])


def random_sets(seed=0, b=6, n=5, m=4, size=7, p=0.3):
    rng = np.random.default_rng(seed)
    s = rng.random((b, n, size, size)) < p
    y = rng.random((b, m, size, size)) < p
    s[0] = False  # every sample empty
    y[0, :2] = False  # two empty graders
    y[1] = False  # all graders empty
    s[2, n - 1] = False
    y[2, 3] = False
    s[3], y[3] = False, False  # an all-empty slice
    return s, y


def lesion_sets(seed=0, b=5, n=16, m=4, size=128):
    """LIDC-like masks: one small disc per mask near a common centre (often empty), so chunks are sparse."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    centre = rng.integers(size // 4, size - size // 4, (b, 1, 2)) + rng.integers(-3, 4, (b, n + m, 2))
    radius = rng.uniform(2, 9, (b, n + m)) * (rng.random((b, n + m)) > 0.3)  # radius 0: an empty mask
    discs = (yy - centre[..., :1, None]) ** 2 + (xx - centre[..., 1:, None]) ** 2 < radius[..., None, None] ** 2
    discs[0] = False  # an all-empty slice
    return discs[:, :n], discs[:, n:]


# ----------------------------------------------------------------------------- hand-computed cases


def test_iou_hand_computed():
    a = masks("1100")[None]  # (1, 1, 1, 4)
    b = masks("0110", "0000", "1100")[None]
    iou = pairwise_iou(a, b).numpy()[0, 0]
    assert iou == pytest.approx([1 / 3, 0.0, 1.0])


def test_ged_hand_computed_two_modes():
    # samples {A, B}, graders {A, A}: d(A, B) = 1 - 1/3 = 2/3
    A, B = "1100", "0110"
    s = masks(A, B)[None]
    y = masks(A, A)[None]
    d = 2 / 3
    e_sy = (0 + 0 + d + d) / 4
    e_ss = (0 + d + d + 0) / 4  # diagonal included (the paper's estimator)
    e_yy = 0.0
    assert ged(s, y).item() == pytest.approx(2 * e_sy - e_ss - e_yy)
    # without the diagonal: E[d(S,S')] = d, E[d(Y,Y')] = 0
    assert ged(s, y, include_diagonal=False).item() == pytest.approx(2 * e_sy - d)


def test_identical_distributions_give_zero_and_one_sample_has_no_diversity():
    y = masks("1100", "0110", "0011", "1100")[None]
    assert ged(y, y, include_diagonal=True).item() == pytest.approx(0.0, abs=1e-7)
    dm = distance_matrices(y, y)
    assert sample_diversity(dm, n_samples=1).item() == 0.0
    assert sample_diversity(dm).item() > 0


def test_empty_mask_conventions():
    empty, full = "0000", "1111"
    s = masks(empty, empty)[None]
    y = masks(empty, full)[None]
    # match: d(e,e)=0, d(e,f)=1 -> E_sy = 0.5, E_ss = 0, E_yy = (0+1+1+0)/4 = 0.5
    assert ged(s, y, "match").item() == pytest.approx(2 * 0.5 - 0 - 0.5)
    # official: the sample/sample and sample/grader means see NaN -> NaN
    assert np.isnan(ged(s, y, "official").item())
    # ignore: E_sy over the defined pairs = 1, E_ss has no pair -> NaN
    assert np.isnan(ged(s, y, "ignore").item())
    s2 = masks(full, full)[None]
    # official with no empty sample: E_yy is a NaN-skipping mean over d(f,e)=1, d(e,f)=1, d(f,f)=0 -> 2/3;
    # E_sy = (1 + 0 + 1 + 0)/4 = 0.5 (plain mean, no NaN), E_ss = 0
    assert ged(s2, y, "official").item() == pytest.approx(2 * 0.5 - 0 - 2 / 3)
    with pytest.raises(ConfigError, match="match, official, ignore"):
        ged(s, y, "zero")


def test_all_empty_slice_is_defined_under_match_only():
    s = np.zeros((1, 3, 4, 4), bool)
    y = np.zeros((1, 4, 4, 4), bool)
    assert ged(s, y, "match").item() == 0.0
    assert np.isnan(ged(s, y, "official").item())


def test_convention_switch_equals_recomputation():
    s, y = random_sets(3)
    dm = distance_matrices(s, y)
    for empty in EMPTY_CONVENTIONS:
        direct = ged_from_distances(distance_matrices(s, y, empty=empty))
        switched = ged_from_distances(dm.convention(empty))
        assert torch.allclose(direct, switched, equal_nan=True)


# ----------------------------------------------------------------------------- brute-force reference


@pytest.mark.parametrize("empty", EMPTY_CONVENTIONS)
@pytest.mark.parametrize("include_diagonal", [True, False])
def test_vectorised_matches_loop_reference(empty, include_diagonal):
    for seed in range(3):
        s, y = random_sets(seed)
        fast = ged(s, y, empty, include_diagonal).numpy()
        slow = ged_reference(s, y, empty, include_diagonal)
        np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("empty", EMPTY_CONVENTIONS)
@pytest.mark.parametrize("include_diagonal", [True, False])
def test_lidc_sized_sparse_masks_match_loop_reference(empty, include_diagonal):
    s, y = lesion_sets(1)
    fast = ged(s, y, empty, include_diagonal).numpy()
    slow = ged_reference(s, y, empty, include_diagonal)
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-6, equal_nan=True)


def brute_force_counts(*stacks):
    x = np.concatenate(stacks, axis=1).reshape(len(stacks[0]), -1, stacks[0][0, 0].size).astype(np.int64)
    return np.einsum("bip,bjp->bij", x, x)


@pytest.mark.parametrize("method", ["popcount", "matmul"])
@pytest.mark.parametrize("chunk", [None, 1, 4])
def test_intersection_counts_are_exact(method, chunk):
    # odd sizes (packed rows need padding), empty masks, all-empty slices, sparse and dense chunks
    for s, y in (random_sets(8, b=7, size=9), random_sets(9, b=5, n=3, m=4, size=13, p=0.9), lesion_sets(2, b=4, size=37)):
        g = _gram([torch.from_numpy(s), torch.from_numpy(y)], method=method, chunk=chunk)
        assert g.dtype == torch.float32
        np.testing.assert_array_equal(g.numpy(), brute_force_counts(s, y))


def test_all_empty_chunks_give_zero_counts():
    s = torch.zeros(3, 4, 10, 10, dtype=torch.bool)
    for method in ("popcount", "matmul"):
        assert not _gram([s], method=method, chunk=2).any()


def test_gram_rejects_unknown_method_bad_chunks_and_huge_masks():
    with pytest.raises(ConfigError, match="method"):
        _gram([torch.zeros(1, 2, 4, 4, dtype=torch.bool)], method="loop")
    with pytest.raises(ConfigError, match="chunk"):
        distance_matrices(*random_sets(0), chunk=0)
    huge = torch.zeros(1, 1, 4097, 4097, dtype=torch.bool)  # 2^24 + 8,193 pixels
    with pytest.raises(ConfigError, match="2\\^24"):
        ged(huge, huge)


def test_pairwise_iou_of_a_set_with_itself_equals_two_sets():
    s, _ = random_sets(10)
    np.testing.assert_array_equal(pairwise_iou(s, s).numpy(), pairwise_iou(s, s.copy()).numpy())


def test_first_n_samples_equals_recomputation():
    s, y = random_sets(5, n=9)
    dm = distance_matrices(s, y)
    for n in (1, 4, 9):
        np.testing.assert_allclose(ged_from_distances(dm, n).numpy(), ged(s[:, :n], y).numpy(), rtol=1e-6)


def test_chunking_does_not_change_results():
    s, y = random_sets(6, b=11)
    a = ged_from_distances(distance_matrices(s, y, chunk=2))
    b = ged_from_distances(distance_matrices(s, y, chunk=100))
    assert torch.allclose(a, b)


def test_weighted_graders_equal_repeated_graders():
    # weights 1/2, 1/4, 1/4 on three outcomes == four graders holding them 2:1:1
    rng = np.random.default_rng(1)
    outcomes = rng.random((2, 3, 6, 6)) < 0.4
    s = rng.random((2, 5, 6, 6)) < 0.4
    repeated = outcomes[:, [0, 0, 1, 2]]
    w = torch.tensor([[0.5, 0.25, 0.25]] * 2)
    weighted = ged_from_distances(distance_matrices(s, outcomes), grader_weights=w)
    assert torch.allclose(weighted, ged(s, repeated), atol=1e-6)
    with pytest.raises(ConfigError):
        ged_from_distances(distance_matrices(s, outcomes, empty="official"), grader_weights=w)


def test_u_statistic_needs_two_samples():
    s, y = random_sets(0, n=1)
    with pytest.raises(ConfigError, match="at least 2"):
        ged(s, y, include_diagonal=False)


def test_shape_errors_are_clear():
    with pytest.raises(ConfigError, match="images, masks, H, W"):
        ged(np.zeros((3, 4, 4), bool), np.zeros((1, 4, 4, 4), bool))
    with pytest.raises(ConfigError, match="share the image count"):
        ged(np.zeros((2, 3, 4, 4), bool), np.zeros((1, 4, 4, 4), bool))
    with pytest.raises(ConfigError, match="boolean"):
        ged(np.zeros((1, 3, 4, 4)), np.zeros((1, 4, 4, 4), bool))


# ----------------------------------------------------------------------------- Hungarian IoU


def test_hungarian_iou_hand_computed():
    A, B, C = "1100", "0011", "0110"
    y = masks(A, B)[None]
    assert hungarian_iou(masks(B, A)[None], y)[0] == pytest.approx(1.0)  # order does not matter
    # samples {A, C} vs graders {A, B}: best matching A-A (1), C-B (1/3)
    assert hungarian_iou(masks(A, C)[None], y)[0] == pytest.approx((1 + 1 / 3) / 2)
    # 4 samples vs 2 graders: graders repeated twice; samples all A -> A,A match 1; A vs B = 0
    assert hungarian_iou(masks(A, A, A, A)[None], y)[0] == pytest.approx(0.5)
    # two empty masks count as a perfect match
    assert hungarian_iou(np.zeros((1, 2, 1, 4), bool), np.zeros((1, 2, 1, 4), bool))[0] == 1.0


def test_hungarian_iou_matches_brute_force():
    import itertools

    s, y = random_sets(7, n=4, m=4)
    iou = pairwise_iou(s, y).numpy()
    brute = [max(np.mean([m[i, p[i]] for i in range(4)]) for p in itertools.permutations(range(4))) for m in iou]
    np.testing.assert_allclose(hungarian_iou(s, y), brute, rtol=1e-6)


# ----------------------------------------------------------------------------- bootstrap


def test_patient_bootstrap():
    values = np.array([1.0, 1.0, 3.0, np.nan])
    groups = np.array(["a", "a", "b", "b"])
    est = bootstrap_ci(values, groups, n_boot=2000, seed=0)[0]
    assert est.mean == pytest.approx(5 / 3) and est.n == 3 and est.groups == 2
    assert 1.0 <= est.low <= est.mean <= est.high <= 3.0
    same = bootstrap_ci(np.ones(10), np.arange(10), n_boot=50)[0]
    assert same.low == same.high == 1.0


# ----------------------------------------------------------------------------- GPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here: the GPU path of the GED is untested in this run")
def test_gpu_matches_cpu():
    s, y = random_sets(4, b=20, size=32)
    cpu, gpu = distance_matrices(s, y), distance_matrices(s, y, device="cuda")  # popcount vs float product
    for term in ("sy", "ss", "yy"):  # exact counts on both: identical, NaNs included
        assert torch.equal(getattr(cpu, term).nan_to_num(-1), getattr(gpu, term).nan_to_num(-1))
    on_gpu = distance_matrices(torch.from_numpy(s).cuda(), torch.from_numpy(y))  # inputs already on the GPU
    assert torch.equal(on_gpu.ss.nan_to_num(-1), cpu.ss.nan_to_num(-1))
