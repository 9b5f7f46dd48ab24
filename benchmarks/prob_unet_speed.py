"""Speed of the Probabilistic U-Net chapter's code: training throughput and GED evaluation.

Prints
- training images/s of the Prob. U-Net and the deterministic U-Net (paper-sized network on
  128x128 slices, batch 10; and the CPU run's smaller network on 64x64), on the CPU and,
  when present, on the GPU;
- the time to score 2,000 slices x 100 samples x 4 graders (random 128x128 masks) with the
  vectorised GED (medad.metrics.ged) against the plain per-image loop (ged_reference),
  timed on a subset and scaled to 2,000 slices, and their ratio.

    python benchmarks/prob_unet_speed.py [--threads 1] [--loop-slices 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from medad.metrics.ged import distance_matrices, ged_from_distances, ged_reference
from medad.models.ambiguous import build_model


def train_speed(name: str, channels, size: int, device: str, steps: int = 3, batch: int = 10) -> float:
    torch.manual_seed(0)
    model = build_model(name, channels=channels).to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    x = torch.rand(batch, 1, size, size, device=device)
    y = torch.rand(batch, 4, size, size, device=device) < 0.1

    def step():
        opt.zero_grad()
        model.loss(x, y)["loss"].backward()
        opt.step()

    step()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--slices", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--loop-slices", type=int, default=3, help="slices timed with the loop (then scaled)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), devices: {', '.join(devices)}")

    print("\ntraining throughput (batch 10, Adam step included)")
    for device in devices:
        for name in ("prob_unet", "unet"):
            for channels, size in (((32, 64, 128, 192), 128), ((16, 32, 64, 96), 64)):
                ips = train_speed(name, channels, size, device)
                print(f"  {device:4s} {name:9s} channels {channels!s:18s} {size}x{size}: {ips:8.1f} images/s")

    print(f"\nGED: {args.slices} slices x {args.samples} samples x 4 graders, random 128x128 masks")
    rng = np.random.default_rng(0)
    chunk = 100  # generate and score in chunks: 2,000 x 100 x 128 x 128 bools would be 3.3 GB
    for device in devices:
        total = 0.0
        for start in range(0, args.slices, chunk):
            n = min(chunk, args.slices - start)
            s = torch.from_numpy(rng.random((n, args.samples, 128, 128), dtype=np.float32) < 0.3)
            y = torch.from_numpy(rng.random((n, 4, 128, 128), dtype=np.float32) < 0.3)
            t = time.perf_counter()  # time the metric (host-to-device copy included), not the mask generation
            ged_from_distances(distance_matrices(s, y, device=device if device != "cpu" else None))
            total += time.perf_counter() - t
        print(f"  vectorised ({device}): {total:8.1f} s  ({total / args.slices * 1e3:.2f} ms per slice)")
    s = rng.random((args.loop_slices, args.samples, 128, 128)) < 0.3
    y = rng.random((args.loop_slices, 4, 128, 128)) < 0.3
    t = time.perf_counter()
    ged_reference(s, y)
    loop = (time.perf_counter() - t) / args.loop_slices * args.slices
    t = time.perf_counter()
    ged_from_distances(distance_matrices(s, y))
    vec_small = (time.perf_counter() - t) / args.loop_slices * args.slices
    print(f"  loop reference (cpu): {loop:8.1f} s  (timed on {args.loop_slices} slices, scaled to {args.slices})")
    print(f"  vectorised on the same {args.loop_slices} slices, scaled: {vec_small:.1f} s")
    print(f"  ratio loop / vectorised (cpu, same slices): {loop / vec_small:.0f}x")


if __name__ == "__main__":
    main()
