"""Training images per second of the early-gastric-cancer chapter's classifier and segmenters.

    python benchmarks/egc_speed.py                               # CPU, the long_cpu profile's sizes
    python benchmarks/egc_speed.py --device cuda --image-size 224 --seg-size 256 --frozen-stages 1

Classifier: one Adam step of GAIN's loss (0.9 CE + 0.1 MSE) per batch, timed twice: from
images through the whole network, and from the cached output of the frozen stages (how the
experiment trains); then with GAIN's attention-mining term, whose second pass over the erased
lesion images goes through the whole network. Segmenters: one Adam step of pixel-wise cross-entropy for each ablation
variant. Random inputs (speed does not depend on pixel values); best of ``--repeats`` batches
after one warm-up batch. Prints one line per model.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch


def _best_rate(step, batch: int, repeats: int, device: str) -> float:
    step()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return batch / best


def main(argv=None) -> int:
    from medad.models.ca_unet import VARIANTS, build_segmenter
    from medad.models.gain import build_classifier
    from medad.runtime import device_description, resolve_device

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--arch", default="effnet-lite0")
    ap.add_argument("--image-size", type=int, default=160)
    ap.add_argument("--frozen-stages", type=int, default=6)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seg-size", type=int, default=96)
    ap.add_argument("--seg-channels", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--seg-batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"device: {device_description(device)}; torch threads: {torch.get_num_threads()}; best of {args.repeats} batches")

    s, b = args.image_size, args.batch
    model = build_classifier(args.arch, "gain", image_size=s, frozen_stages=args.frozen_stages).to(device).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    images = torch.rand(b, 3, s, s, device=device)
    labels = torch.arange(b, device=device) % 2
    masks = torch.rand(b, s, s, device=device) > 0.8
    with torch.no_grad():
        trunk = model.trunk(images)

    def step(**inputs):
        def run():
            opt.zero_grad(set_to_none=True)
            model.loss(labels, masks, **inputs)["loss"].backward()
            opt.step()
        return run

    full = _best_rate(step(images=images), b, args.repeats, device)
    cached = _best_rate(step(trunk=trunk), b, args.repeats, device)
    print(f"GAIN classifier {args.arch} ({model.weights_label}) {s} px, batch {b}: {full:7.1f} images/s from images, "
          f"{cached:7.1f} images/s from cached trunk (first {args.frozen_stages} stages frozen)", flush=True)
    # attention mining classifies each lesion image (half of this batch) again through the whole network
    model.weights.mining = 1.0
    mining = _best_rate(step(trunk=trunk, images=images), b, args.repeats, device)
    model.weights.mining = 0.0
    print(f"GAIN + attention mining, same batch (half lesion images): {mining:7.1f} images/s from cached trunk + images, "
          f"{cached / mining:.1f}x slower than GAIN from cached trunk", flush=True)

    z, sb = args.seg_size, args.seg_batch
    seg_images = torch.rand(sb, 3, z, z, device=device)
    seg_masks = (torch.rand(sb, z, z, device=device) > 0.8).long()
    for variant in VARIANTS:
        net = build_segmenter(variant, args.seg_channels).to(device).train()
        seg_opt = torch.optim.Adam(net.parameters(), lr=1e-3)

        def seg_step():
            seg_opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(seg_images), seg_masks).backward()
            seg_opt.step()

        rate = _best_rate(seg_step, sb, args.repeats, device)
        print(f"segmenter {variant:10s} {z} px, channels {args.seg_channels}, batch {sb}: {rate:7.1f} images/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
