"""MVFA's speed on this machine: one K-shot training epoch through the shared loop and inference, in float32
and in the fast path (bf16 autocast + channels-last), side by side; and memory-bank scoring as one matrix
product against a per-patch loop.

    python benchmarks/mvfa_speed.py                          # STAND-IN at 128 px, CPU, 1 thread
    python benchmarks/mvfa_speed.py --backbone clip-vit-l-14-336 --image-size 240 --device cuda

An epoch is what the few-shot protocol trains on: K normal + K abnormal images x 11 augmentations (88 at
K = 4), through :class:`medad.train.mvfa_tasks.AdapterTask` and :func:`medad.experiment.loop.fit`, the
code the chapter runs. Times are CPU seconds of this process (``time.process_time``) and wall seconds: on
a shared machine the wall clock counts other processes too. The loss after the epoch is printed for both
arithmetics, so a reader sees what bf16 changes. Real CLIP without weights is timed with random weights
(speed does not depend on their values) and the output says so. Inputs are random tensors.
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch


def load(name: str, size: int, levels, device: str):
    from medad.backbones import get_spec, load_backbone

    opts = dict(image_size=size, levels=levels, device=device, resize="squash")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if get_spec(name).family == "standin":
            return load_backbone(name, **opts), ""
        try:
            return load_backbone(name, **opts), ""
        except Exception:  # no weights here: random weights time the same
            return load_backbone(name, pretrained=None, **opts), " (random weights: no CLIP weights on this machine)"


def timed(fn):
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - t0


def main(argv=None) -> int:
    from medad.experiment.loop import LoopSettings, fit
    from medad.models import mvfa as M
    from medad.runtime import device_description, resolve_device
    from medad.train.mvfa_tasks import AdapterTask, TrainData

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="standin-effnet-lite0-minilm")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--levels", type=int, nargs="*", default=[4, 5, 7, 8])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--shots", type=int, default=4, help="K: an epoch is 2K x 11 images; the bank K x 11")
    ap.add_argument("--infer-images", type=int, default=64)
    ap.add_argument("--map-size", type=int, default=64)
    ap.add_argument("--loop-patches", type=int, default=256, help="query patches timed with the per-patch loop")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    backbone, note = load(args.backbone, args.image_size, args.levels, device)
    s, n = args.image_size, 2 * args.shots * 11
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, s, s, generator=g)
    labels = torch.arange(n) % 2
    masks = torch.zeros(n, s, s, dtype=torch.bool)
    masks[1::2, s // 4: s // 2, s // 4: s // 2] = True
    text = torch.nn.functional.normalize(torch.randn(2, backbone.embed_dim, generator=g), dim=1)
    print(f"device: {device_description(device)}; torch threads: {torch.get_num_threads()}; backbone {args.backbone}"
          f"{' (STAND-IN)' if backbone.is_standin else ''}{note} at {s} px; adapters after stages {args.levels}; "
          f"an epoch = {n} images in batches of {args.batch}")
    rows = {}
    for precision, channels_last in (("fp32", False), ("bf16", True)):
        model = M.MVFA(backbone, levels=args.levels, seed=0)
        task = AdapterTask(model, [TrainData("random", images, labels, masks, text)], lr=1e-3, batch_size=args.batch,
                           precision=precision)
        steps = task.steps_per_epoch()
        loop = LoopSettings(steps=steps, seed=0, device=device, precision=precision, channels_last=channels_last,
                            validate_every=None, checkpoint_every=None)
        result, cpu, wall = timed(lambda: fit(task, loop, progress=False))
        bank = M.build_memory_bank(model, images[labels == 0][: args.shots * 11], precision=precision,
                                   channels_last=channels_last)
        x = images[: args.infer_images]
        _, icpu, iwall = timed(lambda: M.branch_scores(model, x, text, bank, args.map_size, batch=16,
                                                       precision=precision, channels_last=channels_last))
        rows[precision] = (cpu, wall, icpu, iwall, result.history[-1]["loss"])
        label = "float32" if precision == "fp32" else "bf16 autocast + channels-last"
        print(f"{label:30s} training epoch: {n / cpu:6.1f} images/s of CPU ({cpu:.1f} s CPU, {wall:.1f} s wall); "
              f"inference, both branches, bank of {bank.size} tokens per level: {len(x) / icpu:6.1f} images/s of CPU "
              f"({iwall:.1f} s wall); loss after the epoch {rows[precision][4]:.4f}")
    a, b = rows["fp32"], rows["bf16"]
    print(f"fast path / float32: training {a[0] / b[0]:.2f}x, inference {a[2] / b[2]:.2f}x (CPU time); "
          f"loss after one epoch differs by {b[4] - a[4]:+.4f} ({100 * (b[4] - a[4]) / a[4]:+.2f}%)")

    # memory-bank scoring of the first level's tokens: one matrix product vs a loop over patches
    with torch.no_grad():
        query = model(images[:8].to(device)).seg[0]
        k = min(args.loop_patches, query.shape[0] * query.shape[1])
        q = query.reshape(-1, query.shape[-1])[:k][None].float()
        b0 = bank.seg[0]
        _, t_mat, _ = timed(lambda: M.memory_bank_scores(q, b0))
        _, t_loop, _ = timed(lambda: M.memory_bank_scores_loop(q.cpu(), b0.cpu()))
        same = torch.allclose(M.memory_bank_scores(q, b0).cpu(), M.memory_bank_scores_loop(q.cpu(), b0.cpu()), atol=1e-5)
    print(f"memory-bank scoring of {k} patches against {bank.size} tokens: matrix product {t_mat * 1e3:.1f} ms, "
          f"per-patch loop {t_loop * 1e3:.1f} ms (CPU), ratio {t_loop / max(t_mat, 1e-9):.1f}x (results equal: {same})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
