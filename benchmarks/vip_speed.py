"""ViP training throughput: cached image features against running the frozen image encoder every step.

    python benchmarks/vip_speed.py --data-dir ../shared/data --threads 1
    python benchmarks/vip_speed.py --backbone standin-effnet-lite2-minilm --steps 5

One training step of ViP (Context Prompt + Merge Prompt, batch 32) is timed
two ways on the same images: (a) image features read from the cache
(``medad.features_cache``), so a step runs only the text encoder and the
prompts; (b) every step decodes, preprocesses and encodes its 32 images with
the frozen image encoder first, as a pipeline without the cache would. Prints
images per second of both and their ratio (the target is at least 10x).
"""
from __future__ import annotations

import argparse
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
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each kind (best is reported)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from medad.backbones import load_backbone
    from medad.data import open_dataset
    from medad.features_cache import image_features
    from medad.models.vip import PromptClassifier
    from medad.runtime import device_description
    from medad.symptoms import load_symptoms

    backbone = load_backbone(args.backbone)
    ds = open_dataset(args.dataset, "val", args.data_dir)
    n = min(len(ds), args.batch * args.steps)
    if hasattr(ds, "subset"):
        ds = ds.subset(list(range(n)))
    with tempfile.TemporaryDirectory() as cache:
        cached = image_features(backbone, ds, root=Path(cache), subset=f"bench{n}", progress=False)
    labels = torch.as_tensor(cached.labels, dtype=torch.long)
    model = PromptClassifier(backbone, load_symptoms(args.dataset).per_class(), context=4, aggregate="merge")
    opt = torch.optim.SGD(model.trainable(), lr=0.002, momentum=0.9)

    def step(features, y):
        loss = model.loss(features, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def timed(with_encoder: bool) -> float:
        best = float("inf")
        for s in range(args.steps):
            idx = range(s * args.batch % n, min(s * args.batch % n + args.batch, n))
            t0 = time.perf_counter()
            if with_encoder:
                with torch.no_grad():
                    feats = backbone.encode_image(backbone.preprocess_batch([ds[i].image for i in idx]), levels=()).embedding
            else:
                feats = cached.features[list(idx)]
            step(feats, labels[list(idx)])
            best = min(best, (time.perf_counter() - t0) / len(idx))
        return 1.0 / best

    step(cached.features[: args.batch], labels[: args.batch])  # warm-up
    fast, slow = timed(False), timed(True)
    kind = "synthetic" if ds.synthetic else "real"
    print(f"device: {device_description('cpu')}; torch threads {torch.get_num_threads()}; {backbone.name} (STAND-IN); "
          f"{args.dataset} ({kind}), batch {args.batch}, best of {args.steps} steps")
    print(f"cached features:           {fast:8.1f} images/s")
    print(f"image encoder every step:  {slow:8.1f} images/s")
    ratio = fast / slow
    print(f"ratio: {ratio:.1f}x ({'meets' if ratio >= 10 else 'BELOW'} the 10x target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
