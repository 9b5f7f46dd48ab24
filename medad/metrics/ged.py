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

All intersections of one image's N + M masks are the entries of one Gram matrix X X^T of
the flattened 0/1 masks X ((N + M) x pixels); the mask sizes are its diagonal, and every
union, IoU and expectation above follows from it with no further pass over the pixels. On
the CPU it is computed by bit counting on masks packed 64 pixels to a word, on a GPU by one
batched float32 product per chunk of images; both are exact integer counts (masks of up to
2^24 pixels), so every convention gives the same numbers either way. :func:`ged_reference`
is the plain per-image loop used to test them (benchmarks/ged_speed.py times them against
the official code's per-pair confusion matrices).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medad.errors import ConfigError

EMPTY_CONVENTIONS = ("match", "official", "ignore")
_CHUNK_BYTES = 192 * 2**20  # on a GPU, the float copy of one chunk of masks stays below this
# on the CPU, a chunk's working copy stays in the cache: ~25 images of 20 masks at 128x128 packed to bits,
# ~3 as floats
_CPU_CHUNK_BYTES = {"popcount": 1 * 2**20, "matmul": 4 * 2**20}


def _check_empty(empty: str) -> None:
    if empty not in EMPTY_CONVENTIONS:
        raise ConfigError(f"empty must be one of {', '.join(EMPTY_CONVENTIONS)}, got {empty!r}")


def _as_bool_tensor(x, name: str, device=None) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dtype != torch.bool:
        if t.is_floating_point():
            raise ConfigError(f"{name} must be boolean (or 0/1 integer) masks, got dtype {t.dtype}; threshold them first")
        if t.numel() and (t.min() < 0 or t.max() > 1):  # a label map or 0/255 mask is not a set of binary masks
            found = torch.unique(t)
            shown = ", ".join(str(int(v)) for v in found[:8]) + (", ..." if len(found) > 8 else "")
            raise ConfigError(f"{name} must be binary masks (bool, or integers 0/1), got values {{{shown}}}; "
                              "threshold them (e.g. mask > 0) or pick one label first")
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


def _bbox(occupied: torch.Tensor) -> tuple[slice, slice]:
    """Rows and columns of the bounding box of an (H, W) occupancy map; one pixel when it is empty."""
    rows, cols = torch.nonzero(occupied.any(dim=1)), torch.nonzero(occupied.any(dim=0))
    if len(rows) == 0:
        return slice(0, 1), slice(0, 1)  # all empty: one pixel keeps the shapes valid (every count is 0)
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _popcount_gram(parts: list[np.ndarray]) -> np.ndarray:
    """X X^T of one chunk by bit counting: masks packed 64 pixels to a word, |a & b| = popcount(a AND b).

    parts: bool (c, K_i, H, W) -> int32 (c, K, K), K = sum of K_i. Words that are zero in every
    mask of the chunk are dropped first (they add nothing: the packed analogue of a bounding-box
    crop); only the upper triangle is counted (the matrix is symmetric), one row of masks at a
    time so that the temporaries stay in the cache.
    """
    c = parts[0].shape[0]
    packed = np.concatenate([np.packbits(p.reshape(c, p.shape[1], -1), axis=-1) for p in parts], axis=1)
    pad = -packed.shape[-1] % 8  # whole 64-bit words; packbits and this padding add only zero bits
    if pad:
        packed = np.concatenate([packed, np.zeros((*packed.shape[:2], pad), np.uint8)], axis=-1)
    words = packed.view(np.uint64)
    used = np.bitwise_or.reduce(words.reshape(-1, words.shape[-1]), axis=0) != 0
    if not used.all():
        words = words[:, :, used]
    k = words.shape[1]
    gram = np.empty((c, k, k), np.int32)
    for i in range(k):
        row = np.bitwise_count(words[:, i : i + 1] & words[:, i:]).sum(-1, dtype=np.int32)
        gram[:, i, i:] = row
        gram[:, i:, i] = row
    return gram


def _gram(stacks: list[torch.Tensor], device=None, chunk: int | None = None, method: str | None = None) -> torch.Tensor:
    """Pixel counts of all pairwise intersections of each image's masks: (B, K, K) float32 on the CPU.

    With the K masks of one image (the stacks joined along axis 1) flattened to 0/1 rows X
    (K x P), the counts are X X^T: intersections off the diagonal, mask sizes on it, computed
    chunk by chunk of images in one of two exact ways (``method``):

    ``"popcount"`` (default on the CPU)
        masks packed to bits, counts by popcount(a AND b) over the upper triangle: 1/32 of the
        memory traffic and about half the pairs of a float product.
    ``"matmul"`` (default on a GPU, or where NumPy lacks ``bitwise_count``)
        one batched float32 product per chunk, cropped to the bounding box of the chunk's masks
        and cast into a reused buffer. Exact because P <= 2^24 (checked): products of 0/1 are
        exact and the sums are float32, also under TF32.
    """
    B, H, W = stacks[0].shape[0], *stacks[0].shape[2:]
    if H * W > 2**24:
        raise ConfigError(f"masks of {H}x{W} pixels exceed 2^24: intersection counts would not be exact in float32")
    target = torch.device(device) if device is not None else stacks[0].device
    if method is None:
        method = "popcount" if target.type == "cpu" and hasattr(np, "bitwise_count") else "matmul"
    if method not in ("popcount", "matmul") or (method == "popcount" and target.type != "cpu"):
        raise ConfigError(f"method must be 'matmul', or 'popcount' on the CPU; got {method!r} on {target}")
    bounds = np.cumsum([0] + [s.shape[1] for s in stacks])
    K = int(bounds[-1])
    if chunk is None:
        per_image = K * H * W / 8 if method == "popcount" else 4 * K * H * W
        chunk = int((_CHUNK_BYTES if target.type != "cpu" else _CPU_CHUNK_BYTES[method]) // per_image)
    elif chunk < 1:
        raise ConfigError(f"chunk must be a positive number of images, got {chunk}")
    chunk = max(1, min(chunk, B))
    buffer = torch.empty(chunk * K * H * W, device=target) if method == "matmul" else None
    gram = torch.empty(B, K, K)
    for start in range(0, B, chunk):
        stop = min(start + chunk, B)
        parts = [s[start:stop].to(target) for s in stacks]
        if method == "popcount":
            gram[start:stop] = torch.from_numpy(_popcount_gram([p.numpy() for p in parts]))
            continue
        parts = [p.view(torch.uint8) for p in parts]  # bool as 0/1 bytes: fast reductions and casts
        occupied = parts[0].flatten(0, 1).amax(0)
        for p in parts[1:]:
            occupied = torch.maximum(occupied, p.flatten(0, 1).amax(0))
        rows, cols = _bbox(occupied)  # IoUs are unchanged, the product gets smaller
        h, w = rows.stop - rows.start, cols.stop - cols.start
        x = buffer[: (stop - start) * K * h * w].view(stop - start, K, h, w)
        for p, k0, k1 in zip(parts, bounds[:-1], bounds[1:]):
            x[:, k0:k1].copy_(p[:, :, rows, cols])
        x = x.flatten(2)
        if target.type == "cpu":
            torch.bmm(x, x.transpose(1, 2), out=gram[start:stop])
        else:
            gram[start:stop] = torch.bmm(x, x.transpose(1, 2)).cpu()
    return gram


def _iou_from_counts(inter: torch.Tensor, size_a: torch.Tensor, size_b: torch.Tensor, empty: str) -> torch.Tensor:
    union = size_a.unsqueeze(-1) + size_b.unsqueeze(-2) - inter
    both_empty = union == 0
    iou = inter / union.clamp_min(1)
    fill = 1.0 if empty == "match" else float("nan")
    return torch.where(both_empty, torch.full_like(iou, fill), iou)


def pairwise_iou(a, b, empty: str = "match") -> torch.Tensor:
    """IoU of every mask in ``a`` with every mask in ``b``, image by image.

    a: bool (B, Na, H, W), b: bool (B, Nb, H, W) -> float32 (B, Na, Nb) on the CPU.
    Two empty masks give 1 under ``empty="match"``, NaN otherwise.
    """
    _check_empty(empty)
    same = a is b
    a, b = _as_bool_tensor(a, "a"), _as_bool_tensor(b, "b")
    _check_pair(a, b)
    if same:  # e.g. the graders against themselves: one set of masks, one product
        g = _gram([a])
        sizes = g.diagonal(dim1=1, dim2=2)
        return _iou_from_counts(g, sizes, sizes, empty)
    g = _gram([a, b])
    na = a.shape[1]
    sizes = g.diagonal(dim1=1, dim2=2)
    return _iou_from_counts(g[:, :na, na:], sizes[:, :na], sizes[:, na:], empty)


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
    N = samples.shape[1]
    g = _gram([samples, graders], device=device, chunk=chunk)
    sizes = g.diagonal(dim1=1, dim2=2)
    size_s, size_y = sizes[:, :N], sizes[:, N:]
    return DistanceMatrices(
        1 - _iou_from_counts(g[:, :N, N:], size_s, size_y, empty),
        1 - _iou_from_counts(g[:, :N, :N], size_s, size_s, empty),
        1 - _iou_from_counts(g[:, N:, N:], size_y, size_y, empty),
        empty, size_s == 0, size_y == 0,
    )


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
    samples, graders = _as_bool_tensor(samples, "samples").numpy(), _as_bool_tensor(graders, "graders").numpy()
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
