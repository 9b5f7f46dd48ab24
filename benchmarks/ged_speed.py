"""Speed of the GED evaluation (medad.metrics.ged) against its previous implementation and the official algorithm.

Scores --slices slices x --samples samples x --graders graders of random 128x128 masks
(pixel density 0.3; one sample in every 3rd slice, all graders of every 4th slice and every
mask of every 10th slice empty, so that the empty-mask conventions give different numbers):

- new: ``distance_matrices`` + ``ged_from_distances`` as the chapters call them (on the CPU the
  Gram matrix of intersections by bit-packed popcount); the Gram matrix alone is also timed by
  popcount and by the batched float product, and the whole evaluation on the GPU when present;
- previous: the implementation this change replaced (commit 9ed947d: per chunk of images a
  bounding-box crop, a bool -> float cast and three float products), kept here for comparison;
- official: the algorithm of the official evaluation code (SimonKohl/probabilistic_unet,
  evaluation/eval_cityscapes.py with the foreground as the one evaluated class): one confusion
  matrix (TP, FP, TN, FN) per pair of masks per image, pairs of graders and of samples visited
  once (i <= j). Timed on --official-slices slices and scaled to --slices.

Times are the best of --repeats, wall clock and process CPU time (the machine may be shared: the
load average is printed before each timing). Checks: the largest |difference| between new and
previous of the distance matrices and of the GED under every empty-mask convention, with and
without i = j pairs (NaN where the other has NaN counts as a difference); new against official
under the "official" convention on the official subset.

    PYTHONPATH=. python benchmarks/ged_speed.py [--threads 1] [--slices 2000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import torch

from medad.metrics.ged import (
    EMPTY_CONVENTIONS, DistanceMatrices, _gram, _iou_from_counts, distance_matrices, ged_from_distances,
)
from medad.runtime import device_description

SIZE = 128


def make_masks(slices: int, samples: int, graders: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    s = torch.empty(slices, samples, SIZE, SIZE, dtype=torch.bool)
    y = torch.empty(slices, graders, SIZE, SIZE, dtype=torch.bool)
    for start in range(0, slices, 100):  # 100 slices of float noise at a time, not 2.6 GB at once
        stop = min(start + 100, slices)
        s[start:stop] = torch.rand(stop - start, samples, SIZE, SIZE, generator=gen) < 0.3
        y[start:stop] = torch.rand(stop - start, graders, SIZE, SIZE, generator=gen) < 0.3
    s[::3, -1] = False
    y[::4] = False
    s[::10], y[::10] = False, False
    return s, y


# ----------------------------------------------------------------------------- the previous implementation


def previous_distance_matrices(samples: torch.Tensor, graders: torch.Tensor, empty: str) -> DistanceMatrices:
    """distance_matrices as it was before this change (commit 9ed947d), for timing and equality only."""
    B, N, H, W = samples.shape
    chunk = max(1, 192 * 2**20 // (4 * (N + graders.shape[1]) * H * W))
    out: dict[str, list] = {k: [] for k in ("sy", "ss", "yy", "se", "ge")}
    for start in range(0, B, chunk):
        s, y = samples[start : start + chunk], graders[start : start + chunk]
        union = s.any(dim=0).any(dim=0) | y.any(dim=0).any(dim=0)
        rows, cols = torch.nonzero(union.any(dim=1)), torch.nonzero(union.any(dim=0))
        if len(rows) == 0:
            s, y = s[..., :1, :1], y[..., :1, :1]
        else:
            r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            s, y = s[..., r0:r1, c0:c1], y[..., r0:r1, c0:c1]
        sf, yf = s.flatten(2).float(), y.flatten(2).float()
        size_s, size_y = sf.sum(-1), yf.sum(-1)
        out["sy"].append(1 - _iou_from_counts(sf @ yf.transpose(1, 2), size_s, size_y, empty))
        out["ss"].append(1 - _iou_from_counts(sf @ sf.transpose(1, 2), size_s, size_s, empty))
        out["yy"].append(1 - _iou_from_counts(yf @ yf.transpose(1, 2), size_y, size_y, empty))
        out["se"].append(size_s == 0)
        out["ge"].append(size_y == 0)
    c = {k: torch.cat(v) for k, v in out.items()}
    return DistanceMatrices(c["sy"], c["ss"], c["yy"], empty, c["se"], c["ge"])


# ----------------------------------------------------------------------------- the official algorithm


def official_distance(a: np.ndarray, b: np.ndarray, ignore: np.ndarray) -> float:
    """1 - IoU of the foreground (label 1) from the pair's confusion matrix; NaN when both are empty."""
    fg_a, fg_b = (a == 1).astype(np.uint8), (b == 1).astype(np.uint8)
    valid = ignore != 1
    counts = np.zeros(4, np.float32)  # TP, FP, TN, FN over the pixels that are not ignored
    for k, (in_a, in_b) in enumerate(((True, True), (True, False), (False, False), (False, True))):
        counts[k] = int((((fg_a != 0) == in_a) * ((fg_b != 0) == in_b) * valid).sum())
    tp, fp, fn = counts[0], counts[1], counts[3]
    return 1.0 - tp / (tp + fp + fn) if tp + fp + fn != 0 else np.nan


def official_ged(samples: np.ndarray, graders: np.ndarray) -> np.ndarray:
    """Per image: the three distance matrices pair by pair, then 2 mean(YS) - mean(SS) - nanmean(YY)."""
    out = np.empty(len(samples))
    for k, (s, y) in enumerate(zip(samples.astype(np.uint8), graders.astype(np.uint8))):
        n, m = len(s), len(y)
        ignore = np.zeros(s.shape[1:], np.uint8)  # no ignored pixels in binary masks
        d_ys = np.zeros((m, n), np.float32)
        d_yy = np.zeros((m, m), np.float32)
        d_ss = np.zeros((n, n), np.float32)
        for i in range(m):
            for j in range(n):
                d_ys[i, j] = official_distance(y[i], s[j], ignore)
            for j in range(i, m):
                d_yy[i, j] = d_yy[j, i] = official_distance(y[i], y[j], ignore)
        for i in range(n):
            for j in range(i, n):
                d_ss[i, j] = d_ss[j, i] = official_distance(s[i], s[j], ignore)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN YY: NaN, as there
            out[k] = 2 * np.mean(d_ys) - np.mean(d_ss) - np.nanmean(d_yy)
    return out


# ----------------------------------------------------------------------------- timing and checks


def best_of(fn, repeats: int) -> tuple[float, float, object]:
    """(best wall seconds, best process CPU seconds, last result) over ``repeats`` calls."""
    wall, cpu, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        result = fn()
        wall, cpu = min(wall, time.perf_counter() - w), min(cpu, time.process_time() - c)
    return wall, cpu, result


def load() -> str:
    return "load {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b|; infinite where exactly one of them is NaN."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if not torch.equal(a.isnan(), b.isnan()):
        return float("inf")
    both = ~a.isnan()
    return float((a[both] - b[both]).abs().max()) if both.any() else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--slices", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--graders", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--official-slices", type=int, default=50, help="slices timed with the official algorithm (then scaled)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{device_description('cpu')}, {args.threads} thread(s); numpy {np.__version__}")
    print(f"GED of {args.slices} slices x {args.samples} samples x {args.graders} graders, random {SIZE}x{SIZE} masks; "
          f"best of {args.repeats}; times as wall / process CPU seconds")
    s, y = make_masks(args.slices, args.samples, args.graders)

    def line(name: str, wall: float, cpu: float, note: str = "") -> None:
        print(f"  {name:50s} {wall:7.2f} s / {cpu:6.2f} s   {note}")

    def new() -> DistanceMatrices:
        dm = distance_matrices(s, y)
        ged_from_distances(dm)
        return dm

    print(f"[{load()}]")
    new_wall, new_cpu, new_dm = best_of(new, args.repeats)
    line("new (distance_matrices + GED, cpu)", new_wall, new_cpu)
    for method in ("popcount", "matmul"):
        print(f"[{load()}]")
        w, c, _ = best_of(lambda: _gram([s, y], method=method), args.repeats)
        line(f"  its Gram matrix alone by {method}", w, c)
    if torch.cuda.is_available():
        w, _, gpu_dm = best_of(lambda: distance_matrices(s, y, device="cuda"), args.repeats)
        line(f"new on {device_description('cuda')}", w, float("nan"), "(results copied back to the CPU included)")
        print(f"    max |GPU - CPU| of the distances: {max_difference(gpu_dm.ss, new_dm.ss):.1e}")
    print(f"[{load()}]")
    old_wall, old_cpu, old_dm = best_of(lambda: previous_distance_matrices(s, y, "match"), args.repeats)
    line("previous implementation (commit 9ed947d)", old_wall, old_cpu,
         f"previous / new: {old_wall / new_wall:.1f}x wall, {old_cpu / new_cpu:.1f}x CPU")

    k = min(args.official_slices, args.slices)
    print(f"[{load()}]")
    w, c, official = best_of(lambda: official_ged(s[:k].numpy(), y[:k].numpy()), args.repeats)
    scale = args.slices / k
    line(f"official algorithm (timed on {k} slices, scaled)", w * scale, c * scale,
         f"official / new: {w * scale / new_wall:.0f}x wall, {c * scale / new_cpu:.0f}x CPU")
    print(f"[{load()}]")

    print("\nequality, new vs previous (max |difference|; inf = NaN in one only)")
    for empty in EMPTY_CONVENTIONS:
        new_e, old_e = new_dm.convention(empty), previous_distance_matrices(s, y, empty)
        diffs = [max_difference(getattr(new_e, t), getattr(old_e, t)) for t in ("sy", "ss", "yy")]
        geds = [max_difference(ged_from_distances(new_e, include_diagonal=d), ged_from_distances(old_e, include_diagonal=d))
                for d in (True, False)]
        nan = int(ged_from_distances(new_e).isnan().sum())
        print(f"  {empty:8s} distances {max(diffs):.1e}; GED with i = j pairs {geds[0]:.1e}, without {geds[1]:.1e} "
              f"({nan} of {args.slices} slices NaN)")
    new_official = ged_from_distances(distance_matrices(s[:k], y[:k], empty="official"))
    print(f"new ('official' convention) vs official algorithm on {k} slices: max |difference| "
          f"{max_difference(new_official, official):.1e} ({int(np.isnan(official).sum())} NaN in both)")


if __name__ == "__main__":
    main()
