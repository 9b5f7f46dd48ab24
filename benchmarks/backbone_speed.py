"""Images per second of ``encode_image`` for each registered backbone on this machine.

    python benchmarks/backbone_speed.py                     # every backbone, batch 16, 3 timed batches
    python benchmarks/backbone_speed.py --names clip-vit-b-16 effnet-lite0 --batch 8 --threads 1

Backbones without weights here (CLIP offline, ResNet-50 / VGG-16 without a local
file) are timed with random weights -- speed does not depend on the weights'
values -- and the output says so. Prints one line per backbone, then a summary.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from medad.backbones import list_backbones, measure
from medad.runtime import device_description, resolve_device


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", nargs="*", default=None, help="backbones to time (default: all registered)")
    parser.add_argument("--batch", type=int, default=16, help="images per timed batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed batches after one warm-up (best is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    names = args.names or list_backbones()
    print(f"device: {device_description(device)}; torch threads: {torch.get_num_threads()}; "
          f"batch {args.batch}, best of {args.repeats}")
    results = []
    for name in names:
        t0 = time.perf_counter()
        backbone, note = measure.load_for_speed(name, device)
        load_s = time.perf_counter() - t0
        res = measure.encode_speed(backbone, args.batch, args.repeats)
        label = name + (" (STAND-IN)" if backbone.is_standin else "")
        results.append((label, res["images_per_s"]))
        print(f"{label:40s} {res['image_size']:4d} px  {res['images_per_s']:8.1f} images/s  "
              f"(load {load_s:5.1f} s; {note})", flush=True)
        del backbone
    fastest = max(results, key=lambda r: r[1])
    print(f"fastest: {fastest[0]} at {fastest[1]:.1f} images/s; ratios to it: "
          + ", ".join(f"{n} {v / fastest[1]:.2f}" for n, v in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
