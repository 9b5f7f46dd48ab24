"""ViP training throughput: cached features against the encoder every step, fp32 against bf16, and the view cache.

    python benchmarks/vip_speed.py --data-dir ../shared/data --threads 1
    python benchmarks/vip_speed.py --backbone standin-effnet-lite2-minilm --steps 5

Three measurements, side by side in one run, on the same images:

1. one training step of ViP (Context Prompt + Merge Prompt, batch 32) with image features read from
   the cache (``medad.features_cache``: a step runs only the text encoder and the prompts) against a
   step that decodes, preprocesses and encodes its 32 images first, as a pipeline without the cache
   would; images per second of both and their ratio (the target is at least 10x);
2. the training step of ViP and of CoOp in float32 and under bf16 autocast (the ``precision``
   parameter), each from the same start for the same batches: seconds per step, seconds per epoch of
   the dataset's whole training split (batch 32, last partial batch dropped), the ratio, and the
   loss after the last step under each precision (what bf16 costs);
3. encoding for the cache: centre crops and augmented views (random resized crop + flip) per second,
   what one view per training image of the dataset costs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="standin-effnet-lite0-minilm")
    parser.add_argument("--dataset", default="chest_xray")
    parser.add_argument("--data-dir", default=None, help="archives folder (default: $MEDAD_DATA, else synthetic data)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps of each kind (median reported)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from medad.backbones import load_backbone
    from medad.data import open_dataset
    from medad.experiment.precision import autocast
    from medad.experiment.schedules import steps_per_epoch
    from medad.features_cache import augmented_views, image_features
    from medad.runtime import device_description
    from medad.symptoms import load_symptoms
    from medad.train.vip_task import METHODS, build_classifier

    backbone = load_backbone(args.backbone)
    train_split = open_dataset(args.dataset, "train", args.data_dir)
    ds = open_dataset(args.dataset, "val", args.data_dir)
    n = min(len(ds), args.batch * args.steps)
    ds = ds.subset(list(range(n)))
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        cached = image_features(backbone, ds, root=Path(cache), subset=f"bench{n}", progress=False)
        centre_rate = n / (time.perf_counter() - t0)
        few = ds.subset(list(range(min(n, 16))))
        t0 = time.perf_counter()
        augmented_views(backbone, few, n_views=2, seed=0, root=Path(cache), subset="bench-views", progress=False)
        view_rate = 2 * len(few) / (time.perf_counter() - t0)
    labels = torch.as_tensor(cached.labels, dtype=torch.long)
    symptoms = load_symptoms(args.dataset)
    batches = [list(range(s * args.batch % n, min(s * args.batch % n + args.batch, n))) for s in range(args.steps)]

    def train(key: str, precision: str, with_encoder: bool = False) -> tuple[float, float]:
        """Median seconds per step over the batches, and the loss of the last step (same start for every call)."""
        torch.manual_seed(0)
        model = build_classifier(METHODS[key], backbone, symptoms, "image")
        opt = torch.optim.SGD(model.trainable(), lr=0.002, momentum=0.9, weight_decay=5e-4)
        times, loss = [], float("nan")
        for i, idx in enumerate([batches[0]] + batches):  # the first step warms up and is not timed
            t0 = time.perf_counter()
            if with_encoder:
                with torch.no_grad():
                    feats = backbone.encode_image(backbone.preprocess_batch([ds[j].image for j in idx]), levels=()).embedding
            else:
                feats = cached.features[idx]
            with autocast("cpu", precision):
                terms = model.loss_terms(feats, labels[idx])
            opt.zero_grad()
            terms["loss"].backward()
            opt.step()
            loss = float(terms["loss"].detach())
            if i:
                times.append(time.perf_counter() - t0)
        return statistics.median(times), loss

    kind = "synthetic" if ds.synthetic else "real"
    spe = steps_per_epoch(len(train_split), args.batch)
    print(f"device: {device_description('cpu')}; torch threads {torch.get_num_threads()}; {backbone.name} (STAND-IN); "
          f"{args.dataset} ({kind}), batch {args.batch}, median of {args.steps} steps; an epoch of the whole training "
          f"split ({len(train_split):,} images) is {spe} steps")
    fast, _ = train("vip", "fp32")
    slow, _ = train("vip", "fp32", with_encoder=True)
    print(f"1. ViP, cached features:          {args.batch / fast:8.1f} images/s")
    print(f"   ViP, image encoder every step: {args.batch / slow:8.1f} images/s")
    print(f"   ratio: {slow / fast:.1f}x ({'meets' if slow / fast >= 10 else 'BELOW'} the 10x target)")
    for key in ("vip", "coop"):
        (t32, l32), (t16, l16) = train(key, "fp32"), train(key, "bf16")
        texts = sum(len(t) for t in build_classifier(METHODS[key], backbone, symptoms, "image").texts)
        print(f"2. {key:4s} ({texts} texts): fp32 {t32:.3f} s/step ({t32 * spe:.0f} s/epoch), bf16 {t16:.3f} s/step "
              f"({t16 * spe:.0f} s/epoch): bf16 {t32 / t16:.2f}x; loss after {args.steps} steps fp32 {l32:.4f}, "
              f"bf16 {l16:.4f} (difference {abs(l32 - l16):.4f})")
    print(f"3. encoding: centre crops {centre_rate:.1f} images/s, augmented views {view_rate:.1f} views/s: one view "
          f"per training image costs {len(train_split) / view_rate / 60:.0f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
