"""The fast path against the straightforward float32 loop, side by side, on the same data (issue 19).

Three training workloads, each run twice from the same initial weights and the same batches:

- the paper-size Probabilistic U-Net (channels 32-64-128-192, 3 convolutions per block, latent 6,
  batch 10, 128x128 LIDC slices);
- the CA-U-Net at 224 px (the full profile's channels, batch 8, Kvasir-SEG images, pixel-wise CE);
- MVFA's adapters on the STAND-IN backbone (EfficientNet-Lite0 + MiniLM at 128 px, batch 8, the
  chapter's loss on augmented support images of LGG brain MRI with masks).

"float32" is the plain loop: float32 arithmetic, contiguous NCHW tensors, batches assembled on the
host every step. "fast" is what `medad.experiment.loop.fit` does with ``precision: bf16`` and
``channels_last: true``: bfloat16 autocast (losses in float32) and channels-last weights and batches;
on a GPU it also keeps the data resident on the device and, with ``--compile``, compiles the model.
For each workload the script prints images/s of both, their ratio, and the training loss after the
same fixed number of steps in both, so a reader sees what the precision costs.

Real data is used when ``MEDAD_DATA`` (or ``--data-dir``) holds the archives, else the synthetic
counterparts (said in the output).

    python benchmarks/fast_path.py [--threads 1] [--steps 8] [--device cpu|cuda] [--compile]
"""
from __future__ import annotations

import argparse
import contextlib
import time
import warnings

import numpy as np
import torch
from torch.nn import functional as F

from medad.experiment.precision import as_input, autocast, memory_format


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def clock_for(device: str, threads: int):
    """One CPU thread: the process's CPU time, so that other work on a shared machine does not count; else wall time."""
    return time.process_time if device == "cpu" and threads == 1 else time.perf_counter


def run(workload, device: str, fast: bool, steps: int, compile_model: bool = False, clock=time.perf_counter,
        channels_last: bool | None = None) -> dict:
    """Train ``steps`` steps after one warm-up step; images/s and the mean loss of the last two steps.
    ``fast``: bf16 autocast (and data resident on a GPU); ``channels_last``: default ``fast``."""
    model, batches, loss_of = workload(device, fast, fast if channels_last is None else channels_last)
    if fast and compile_model and device.startswith("cuda"):
        model = torch.compile(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    context = (lambda: autocast(device, "bf16")) if fast else contextlib.nullcontext
    losses, n_images, seconds = [], 0, 0.0
    for i in range(steps + 1):
        t0 = clock()
        batch = batches(i)
        with context():
            loss = loss_of(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if i:  # the first step warms up (allocations, oneDNN/cuDNN plans)
            seconds += clock() - t0
            n_images += len(batch[0])
        losses.append(float(loss.detach()))
    return {"images_per_s": n_images / seconds, "final_loss": float(np.mean(losses[-2:]))}


def _host_or_resident(arrays: list[np.ndarray], device: str, fast: bool, batch: int, to_input):
    """Batches of ``batch`` items, cycling: assembled from host arrays every step (plain), or indexed from
    tensors already on the device (fast path on a GPU; on the CPU both are host memory)."""
    n = len(arrays[0])
    resident = [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays] if fast else None

    def batches(i):
        idx = np.arange(i * batch, (i + 1) * batch) % n
        if resident is not None:
            parts = [t[torch.as_tensor(idx, device=device)] for t in resident]
        else:
            parts = [torch.from_numpy(np.ascontiguousarray(a[idx])).to(device) for a in arrays]
        return to_input(parts)

    return batches


def prob_unet_workload(data_dir):
    from medad.data import open_dataset
    from medad.data.lidc import load_arrays
    from medad.models.ambiguous import build_model

    ds = open_dataset("lidc", "train", data_dir)
    arrays = load_arrays(ds, progress=False)
    images, masks = arrays["images"][:200], arrays["grader_masks"][:200]

    def workload(device, fast, channels_last):
        torch.manual_seed(0)
        model = build_model("prob_unet", channels=(32, 64, 128, 192), convs_per_block=3, latent_dim=6).to(device)
        memory_format(model, channels_last)
        gen = torch.Generator(device=device).manual_seed(0)

        def to_input(parts):
            x = parts[0].float().div(255).unsqueeze(1)
            return as_input(x, channels_last), parts[1]

        batches = _host_or_resident([images, masks], device, fast, 10, to_input)
        return model, batches, lambda m, b: m.loss(b[0], b[1], generator=gen)["loss"]

    return "Prob. U-Net, paper size (32-64-128-192, 128x128, batch 10)", ds.synthetic, workload


def ca_unet_workload(data_dir):
    from PIL import Image

    from medad.data import open_dataset
    from medad.models.ca_unet import build_segmenter

    ds = open_dataset("kvasir_seg", "train", data_dir)
    size = 224
    images, masks = [], []
    for i in range(min(48, len(ds))):
        s = ds[i]
        images.append(np.asarray(Image.fromarray(s.image).convert("RGB").resize((size, size), Image.BILINEAR)))
        masks.append(np.asarray(Image.fromarray(s.mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 127)
    images, masks = np.stack(images), np.stack(masks)

    def workload(device, fast, channels_last):
        model = build_segmenter("ca-unet", (32, 64, 128, 256, 512), seed=0).to(device)
        memory_format(model, channels_last)

        def to_input(parts):
            x = parts[0].permute(0, 3, 1, 2).float().div(255)
            return as_input(x, channels_last), parts[1].long()

        batches = _host_or_resident([images, masks], device, fast, 8, to_input)
        return model, batches, lambda m, b: F.cross_entropy(m(b[0]).float(), b[1])

    return "CA-U-Net, full profile's channels (32-512, 224x224, batch 8)", ds.synthetic, workload


def mvfa_workload(data_dir):
    from medad.backbones import load_backbone
    from medad.data import open_dataset
    from medad.models import mvfa as M

    ds = open_dataset("lgg_brain_ad", "val", data_dir)
    labels = (np.asarray(ds.labels) > 0).astype(np.int64)
    pick = np.concatenate([np.flatnonzero(labels == 0)[:4], np.flatnonzero(labels == 1)[:4]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = load_backbone("standin-effnet-lite0-minilm", image_size=128, resize="squash")
    images = torch.stack([backbone.preprocess(ds[int(i)].image) for i in pick])
    masks = torch.stack([F.interpolate(torch.from_numpy(ds[int(i)].mask.astype(np.float32))[None, None], size=(128, 128),
                                       mode="nearest")[0, 0] > 0.5 for i in pick])
    images, masks = M.augment_x11(images, masks)
    y = np.tile(labels[pick], 11)
    text = M.text_matrix(backbone, M.object_name("lgg_brain_ad"))
    arrays = [images.numpy(), masks.numpy(), y]

    def workload(device, fast, channels_last):
        model = M.MVFA(backbone.to(device), seed=0).to(device)
        memory_format(model, channels_last)
        loss_fn = M.MVFALoss()

        def to_input(parts):
            return as_input(parts[0], channels_last), parts[1], parts[2]

        batches = _host_or_resident(arrays, device, fast, 8, to_input)
        return model, batches, lambda m, b: loss_fn(m(b[0]), text.to(device), b[2], b[1])

    return "MVFA adapters on the STAND-IN (EfficientNet-Lite0 + MiniLM, 128 px, batch 8)", ds.synthetic, workload


def main(argv=None) -> int:
    from medad.data.registry import resolve_data_dir
    from medad.runtime import device_description, resolve_device

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=8, help="timed training steps per loop (after one warm-up step)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--compile", action="store_true", help="GPU fast path: torch.compile the model")
    ap.add_argument("--only", default=None, help="comma-separated: prob_unet, ca_unet, mvfa")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data_dir = resolve_data_dir(args.data_dir)
    clock = clock_for(device, args.threads)
    print(f"device: {device_description(device)}; {args.threads} CPU thread(s); {args.steps} timed steps per loop; "
          f"timed by {'the process CPU time' if clock is time.process_time else 'wall time'}")
    builders = {"prob_unet": prob_unet_workload, "ca_unet": ca_unet_workload, "mvfa": mvfa_workload}
    chosen = args.only.split(",") if args.only else list(builders)
    print("fast = bf16 autocast + channels-last; bf16 NCHW = bf16 autocast alone (channels-last does not pay for every model)")
    print(f"{'workload':<74} {'float32 img/s':>13} {'fast img/s':>11} {'ratio':>6} {'bf16 NCHW img/s':>15} {'ratio':>6} "
          f"{'loss fp32':>10} {'loss fast':>10}")
    for key in chosen:
        title, synthetic, workload = builders[key](data_dir)
        plain = run(workload, device, False, args.steps, clock=clock)
        fast = run(workload, device, True, args.steps, args.compile, clock=clock)
        nchw = run(workload, device, True, args.steps, args.compile, clock=clock, channels_last=False)
        title += " [synthetic data]" if synthetic else ""
        ratio = {k: v["images_per_s"] / plain["images_per_s"] for k, v in (("fast", fast), ("nchw", nchw))}
        print(f"{title:<74} {plain['images_per_s']:>13.1f} {fast['images_per_s']:>11.1f} {ratio['fast']:>5.2f}x "
              f"{nchw['images_per_s']:>15.1f} {ratio['nchw']:>5.2f}x {plain['final_loss']:>10.4g} {fast['final_loss']:>10.4g}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
