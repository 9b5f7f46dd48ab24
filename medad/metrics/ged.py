"""Generalized energy distance (GED), sample diversity and Hungarian-matched IoU for sets of binary masks.

For a model's segmentation samples ``S`` and the graders' masks ``Y`` of one image
(Kohl et al., NeurIPS 2018, following Székely & Rizzo's energy distance)::

    D^2_GED = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')],      d(a, b) = 1 - IoU(a, b)

Each expectation is estimated from all pairs of the N samples and M graders.

Pairs with i = j (``include_diagonal``)
    The paper's estimator, as in the official evaluation code and in PHiSeg's, averages
    ``E[d(S, S')]`` over all N x N pairs *including* i = j (where d = 0): a V-statistic.
    That is the default here, so numbers compare with the literature. It makes
    ``E[d(S, S')]`` shrink by (N - 1) / N, which is why GED falls as N grows and why
    one sample gives ``E[d(S, S')] = 0``. ``include_diagonal=False`` gives the unbiased
    U-statistic over i != j instead (needs N >= 2 and M >= 2). The same choice applies to
    ``E[d(Y, Y')]`` over the graders.

Two empty masks (``empty``)
    IoU(empty, empty) is 0/0. LIDC has many empty grader masks, so the convention matters:

    ``"match"`` (default)
        two empty masks agree perfectly: IoU = 1, d = 0. Defined for every slice; it is
        also PHiSeg's choice (their code scores two empty masks as IoU 1).
    ``"official"``
        as the official Probabilistic U-Net code (evaluation/eval_cityscapes.py with a single
        evaluated class): d(empty, empty) = NaN; ``E[d(S, Y)]`` and ``E[d(S, S')]`` are plain
        means, so one empty-empty pair makes the image's GED NaN; ``E[d(Y, Y')]`` is a
        NaN-ignoring mean.
    ``"ignore"``
        empty-empty pairs are left out of every expectation (NaN only where a term has no
        pair left).

All functions are vectorised over images x samples x graders with torch (CPU or CUDA):
intersections are one batched matrix product of the flattened masks, exact in float32
for masks of up to 2^24 pixels. :func:`ged_reference` is the plain per-image loop used to
test (and time) them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medad.errors import ConfigError

EMPTY_CONVENTIONS = ("match", "official", "ignore")
_CHUNK_BYTES = 192 * 2**20  # float copies of one chunk of masks stay below this


def _check_empty(empty: str) -> None:
    if empty not in EMPTY_CONVENTIONS:
        raise ConfigError(f"empty must be one of {', '.join(EMPTY_CONVENTIONS)}, got {empty!r}")


def _as_bool_tensor(x, name: str, device=None) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dtype != torch.bool:
        if t.is_floating_point():
            raise ConfigError(f"{name} must be boolean (or 0/1 integer) masks, got dtype {t.dtype}; threshold them first")
        t = t != 0
    if t.dim() != 4:
        raise ConfigError(f"{name} must have shape (images, masks, H, W), got {tuple(t.shape)}")
    return t.to(device) if device is not None else t


def _check_pair(samples: torch.Tensor, graders: torch.Tensor) -> None:
    if samples.shape[0] != graders.shape[0] or samples.shape[2:] != graders.shape[2:]:
        raise ConfigError(
            f"samples {tuple(samples.shape)} and graders {tuple(graders.shape)} must share the image count and H, W"
        )
    if samples.shape[1] < 1 or graders.shape[1] < 1:
        raise ConfigError("need at least one sample and one grader mask per image")


def _bbox_crop(*stacks: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Crop all stacks to the bounding box of their union: IoUs are unchanged, the products get smaller."""
    union = torch.zeros(stacks[0].shape[-2:], dtype=torch.bool, device=stacks[0].device)
    for s in stacks:
        union |= s.any(dim=0).any(dim=0)
    rows, cols = torch.nonzero(union.any(dim=1)), torch.nonzero(union.any(dim=0))
    if len(rows) == 0:
        return tuple(s[..., :1, :1] for s in stacks)  # all empty: one pixel keeps shapes valid
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return tuple(s[..., r0:r1, c0:c1] for s in stacks)


def _iou_from_counts(inter: torch.Tensor, size_a: torch.Tensor, size_b: torch.Tensor, empty: str) -> torch.Tensor:
    union = size_a.unsqueeze(-1) + size_b.unsqueeze(-2) - inter
    both_empty = union == 0
    iou = inter / union.clamp_min(1)
    fill = 1.0 if empty == "match" else float("nan")
    return torch.where(both_empty, torch.full_like(iou, fill), iou)


def pairwise_iou(a, b, empty: str = "match") -> torch.Tensor:
    """IoU of every mask in ``a`` with every mask in ``b``, image by image.

    a: bool (B, Na, H, W), b: bool (B, Nb, H, W) -> float32 (B, Na, Nb).
    Two empty masks give 1 under ``empty="match"``, NaN otherwise.
    """
    _check_empty(empty)
    a, b = _as_bool_tensor(a, "a"), _as_bool_tensor(b, "b")
    _check_pair(a, b)
    a, b = _bbox_crop(a, b)
    af, bf = a.flatten(2).float(), b.flatten(2).float()
    inter = af @ bf.transpose(1, 2)
    return _iou_from_counts(inter, af.sum(-1), bf.sum(-1), empty)


@dataclass
class DistanceMatrices:
    """d = 1 - IoU for all pairs of one set of images: samples x graders, samples x samples, graders x graders."""

    sy: torch.Tensor  # (B, N, M)
    ss: torch.Tensor  # (B, N, N)
    yy: torch.Tensor  # (B, M, M)
    empty: str
    sample_empty: torch.Tensor  # (B, N) bool: which samples are empty masks
    grader_empty: torch.Tensor  # (B, M) bool

    @property
    def n_samples(self) -> int:
        return self.sy.shape[1]

    def first(self, n: int) -> "DistanceMatrices":
        """The matrices of the first ``n`` samples only (GED against the number of samples)."""
        if not 1 <= n <= self.n_samples:
            raise ConfigError(f"n_samples must be in 1..{self.n_samples}, got {n}")
        return DistanceMatrices(self.sy[:, :n], self.ss[:, :n, :n], self.yy, self.empty,
                                self.sample_empty[:, :n], self.grader_empty)

    def convention(self, empty: str) -> "DistanceMatrices":
        """The same distances under another empty-mask convention (no recomputation: only empty-empty pairs change)."""
        _check_empty(empty)
        fill = 0.0 if empty == "match" else float("nan")

        def redo(d, ea, eb):
            return torch.where(ea[:, :, None] & eb[:, None, :], torch.full_like(d, fill), d)

        se, ge = self.sample_empty, self.grader_empty
        return DistanceMatrices(redo(self.sy, se, ge), redo(self.ss, se, se), redo(self.yy, ge, ge), empty, se, ge)


def distance_matrices(samples, graders, empty: str = "match", device=None, chunk: int | None = None) -> DistanceMatrices:
    """All pairwise distances d = 1 - IoU needed by GED, computed chunk by chunk of images.

    samples: bool (B, N, H, W), graders: bool (B, M, H, W). ``device`` (e.g. "cuda") is where
    the products run; results come back on the CPU as float32.
    """
    _check_empty(empty)
    samples, graders = _as_bool_tensor(samples, "samples"), _as_bool_tensor(graders, "graders")
    _check_pair(samples, graders)
    B, N, H, W = samples.shape
    M = graders.shape[1]
    if chunk is None:
        chunk = max(1, _CHUNK_BYTES // (4 * (N + M) * H * W))
    out_sy, out_ss, out_yy, out_se, out_ge = [], [], [], [], []
    for start in range(0, B, chunk):
        s = samples[start : start + chunk].to(device) if device else samples[start : start + chunk]
        y = graders[start : start + chunk].to(device) if device else graders[start : start + chunk]
        s, y = _bbox_crop(s, y)
        sf, yf = s.flatten(2).float(), y.flatten(2).float()
        size_s, size_y = sf.sum(-1), yf.sum(-1)
        out_sy.append((1 - _iou_from_counts(sf @ yf.transpose(1, 2), size_s, size_y, empty)).cpu())
        out_ss.append((1 - _iou_from_counts(sf @ sf.transpose(1, 2), size_s, size_s, empty)).cpu())
        out_yy.append((1 - _iou_from_counts(yf @ yf.transpose(1, 2), size_y, size_y, empty)).cpu())
        out_se.append((size_s == 0).cpu())
        out_ge.append((size_y == 0).cpu())
    return DistanceMatrices(torch.cat(out_sy), torch.cat(out_ss), torch.cat(out_yy), empty, torch.cat(out_se), torch.cat(out_ge))


def _pair_mean(d: torch.Tensor, skip_nan: bool, include_diagonal: bool) -> torch.Tensor:
    """Mean over the last two axes (all pairs, or i != j only); NaN-skipping when asked."""
    if include_diagonal:
        flat = d.flatten(-2)
    else:
        n = d.shape[-1]
        if n < 2 or d.shape[-2] != n:
            raise ConfigError(f"include_diagonal=False needs a square set of at least 2 masks, got {tuple(d.shape[-2:])}")
        off = ~torch.eye(n, dtype=torch.bool, device=d.device)
        flat = d.flatten(-2)[..., off.flatten()]
    return flat.nanmean(-1) if skip_nan else flat.mean(-1)


def ged_from_distances(
    dm: DistanceMatrices,
    n_samples: int | None = None,
    include_diagonal: bool = True,
    grader_weights=None,
    return_terms: bool = False,
):
    """GED per image from precomputed distances (first ``n_samples`` samples; all by default).

    grader_weights: optional (B, M) probabilities of the grader masks (a known distribution,
    e.g. a synthetic dataset's oracle outcomes). Then E[d(S, Y)] = mean_i sum_j w_j d(s_i, y_j) and
    E[d(Y, Y')] = sum_jk w_j w_k d(y_j, y_k), the exact expectations (j = k included, as two
    independent draws can coincide). Only with ``empty="match"``.
    Returns (B,) float32, or with ``return_terms`` a dict of ged, sy, ss, yy (each (B,)).
    """
    if n_samples is not None:
        dm = dm.first(n_samples)
    official = dm.empty == "official"
    skip = dm.empty == "ignore"
    if grader_weights is not None:
        if dm.empty != "match":
            raise ConfigError("grader_weights need empty='match' (weighted expectations with NaN pairs are not defined)")
        w = torch.as_tensor(grader_weights, dtype=torch.float32)
        if w.shape != dm.sy.shape[::2] or (w < 0).any() or not torch.allclose(w.sum(-1), torch.ones(())):
            raise ConfigError(f"grader_weights must be (images, graders) = {tuple(dm.sy.shape[::2])} probabilities summing to 1")
        e_sy = (dm.sy * w[:, None, :]).sum(-1).mean(-1)
        e_yy = (dm.yy * w[:, :, None] * w[:, None, :]).sum((-1, -2))
    else:
        e_sy = _pair_mean(dm.sy, skip, True)
        e_yy = _pair_mean(dm.yy, skip or official, include_diagonal)
    e_ss = _pair_mean(dm.ss, skip, include_diagonal)
    ged = 2 * e_sy - e_ss - e_yy
    if return_terms:
        return {"ged": ged, "sy": e_sy, "ss": e_ss, "yy": e_yy}
    return ged


def ged(samples, graders, empty: str = "match", include_diagonal: bool = True, grader_weights=None, device=None) -> torch.Tensor:
    """D^2_GED per image. samples: bool (B, N, H, W); graders: bool (B, M, H, W) -> float32 (B,). See the module doc."""
    dm = distance_matrices(samples, graders, empty=empty, device=device)
    return ged_from_distances(dm, include_diagonal=include_diagonal, grader_weights=grader_weights)


def sample_diversity(dm: DistanceMatrices, n_samples: int | None = None, include_diagonal: bool = True) -> torch.Tensor:
    """E[d(S, S')] per image: how different a model's samples are from each other (0 = all identical)."""
    if n_samples is not None:
        dm = dm.first(n_samples)
    return _pair_mean(dm.ss, dm.empty == "ignore", include_diagonal)


def hungarian_iou(samples, graders) -> np.ndarray:
    """Hungarian-matched IoU per image (Kohl et al., 2019's HM-IoU), with IoU(empty, empty) = 1.

    The graders are repeated to as many columns as there are samples when N is a multiple of
    M (e.g. 16 samples vs 4 graders: each grader matched 4 times), so every sample is matched;
    otherwise min(N, M) pairs are matched. Returns the mean IoU of the matched pairs, (B,).
    """
    from scipy.optimize import linear_sum_assignment

    iou = pairwise_iou(samples, graders, empty="match").numpy()
    n, m = iou.shape[1:]
    if n % m == 0:
        iou = np.tile(iou, (1, 1, n // m))
    result = np.empty(iou.shape[0], dtype=np.float64)
    for k, mat in enumerate(iou):
        rows, cols = linear_sum_assignment(mat, maximize=True)
        result[k] = mat[rows, cols].mean()
    return result


def _iou_loop(a: np.ndarray, b: np.ndarray, empty: str) -> float:
    union = np.logical_or(a, b).sum()
    if union == 0:
        return 1.0 if empty == "match" else float("nan")
    return float(np.logical_and(a, b).sum() / union)


def ged_reference(samples, graders, empty: str = "match", include_diagonal: bool = True) -> np.ndarray:
    """The straightforward per-image, per-pair loop (NumPy) for the same GED: the tests' and benchmark's reference."""
    _check_empty(empty)
    samples, graders = np.asarray(samples, bool), np.asarray(graders, bool)
    out = np.empty(len(samples))
    mean_sy = np.nanmean if empty == "ignore" else np.mean
    mean_ss = np.nanmean if empty == "ignore" else np.mean
    mean_yy = np.mean if empty == "match" else np.nanmean
    import warnings

    for k, (s, y) in enumerate(zip(samples, graders)):
        n, m = len(s), len(y)
        d_sy = [1 - _iou_loop(s[i], y[j], empty) for i in range(n) for j in range(m)]
        d_ss = [1 - _iou_loop(s[i], s[j], empty) for i in range(n) for j in range(n) if include_diagonal or i != j]
        d_yy = [1 - _iou_loop(y[i], y[j], empty) for i in range(m) for j in range(m) if include_diagonal or i != j]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN term is NaN, as documented
            out[k] = 2 * mean_sy(d_sy) - mean_ss(d_ss) - mean_yy(d_yy)
    return out
