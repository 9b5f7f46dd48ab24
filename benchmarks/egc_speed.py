"""Training speed of the early-gastric-cancer chapter's models in float32 and on the fast path, side by side.

    python benchmarks/egc_speed.py                         # the long_cpu profile's sizes, then CA-U-Net at 224 px
    python benchmarks/egc_speed.py --profile full --device cuda
    python benchmarks/egc_speed.py --profile quick --no-224

For each model, one training step as ``medad.experiment.loop.fit`` runs it (zero_grad, the loss
under ``medad.experiment.precision.autocast``, backward, Adam step; weights and batches
channels-last on the fast path) is timed in float32 and in bf16 autocast + channels-last,
alternately, best of ``--repeats`` steps after one warm-up step each, on the same random batch
(speed does not depend on pixel values). Models, at the profile's sizes and batch sizes
(medad/profiles/egc.yml):

- GAIN from the cached output of the frozen stages (how the experiment trains the classifiers),
  GAIN + attention mining (its second pass over the erased lesion images runs the whole network),
  and GAIN from images through the whole network;
- each segmentation variant (U-Net, +CBAM, +ASPP, CA-U-Net) with pixel-wise cross-entropy;
- unless ``--no-224``: CA-U-Net at 224 px with the full profile's widths (issue 19's size).

Each line gives images/s for both, their ratio, and what the precision costs: the loss after
``--steps`` training steps from the same initial weights on the same batch, in both precisions.

Clock: on the CPU with one thread, the process's CPU time (``time.process_time``), so that other
work on a shared machine does not count against either precision (with one thread it equals the
wall time of an idle machine); with more threads or on a GPU, the wall time.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time

import torch
from torch.nn import functional as F

from medad.experiment.precision import as_input, autocast, memory_format

FAST = ("bf16", True)
PLAIN = ("fp32", False)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def clock(device: str):
    """CPU seconds of this process for a one-thread CPU run (immune to other load), else wall seconds."""
    return time.process_time if device == "cpu" and torch.get_num_threads() == 1 else time.perf_counter


class Trainer:
    """One model, its Adam optimiser and a loss of a fixed batch, in one precision and memory format."""

    def __init__(self, model: torch.nn.Module, loss, device: str, precision: str, channels_last: bool):
        self.model = memory_format(copy.deepcopy(model).to(device), channels_last).train()
        self.opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=1e-3)
        self.loss, self.device, self.precision, self.channels_last = loss, device, precision, channels_last

    def step(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            value = self.loss(self.model, self.channels_last)
        value.backward()
        self.opt.step()
        return float(value.detach())

    def timed_step(self) -> float:
        now = clock(self.device)
        _sync(self.device)
        t0 = now()
        self.step()
        _sync(self.device)
        return now() - t0


def compare(name: str, model: torch.nn.Module, loss, batch: int, device: str, repeats: int, steps: int) -> dict:
    """Images/s of float32 and of the fast path (alternating, best of ``repeats``), and the loss after ``steps`` steps."""
    torch.manual_seed(0)
    runs = {mode: Trainer(model, loss, device, *mode) for mode in (PLAIN, FAST)}
    best = {mode: float("inf") for mode in runs}
    for trainer in runs.values():
        trainer.step()  # warm-up (oneDNN picks its kernels on the first call)
    for _ in range(repeats):
        for mode, trainer in runs.items():
            best[mode] = min(best[mode], trainer.timed_step())
    final = {}
    for mode in runs:  # the cost of the precision: same start, same batch, `steps` steps each
        torch.manual_seed(0)
        trainer = Trainer(model, loss, device, *mode)
        for _ in range(steps):
            last = trainer.step()
        final[mode] = last
    out = {"model": name, "fp32_ips": batch / best[PLAIN], "fast_ips": batch / best[FAST],
           "loss_fp32": final[PLAIN], "loss_fast": final[FAST]}
    out["ratio"] = out["fast_ips"] / out["fp32_ips"]
    print(f"{name:58s} {out['fp32_ips']:7.1f} {out['fast_ips']:7.1f} images/s  {out['ratio']:4.2f}x   loss after "
          f"{steps} steps {final[PLAIN]:.4f} vs {final[FAST]:.4f} ({final[FAST] - final[PLAIN]:+.4f})", flush=True)
    return out


def classifier_lines(cfg: dict, device: str, repeats: int, steps: int) -> list[dict]:
    from medad.models.gain import build_classifier

    s, b, frozen = cfg["image_size"], cfg["cls_batch_size"], cfg["frozen_stages"]
    torch.manual_seed(0)
    images = torch.rand(b, 3, s, s, device=device)
    labels = torch.arange(b, device=device) % 2
    masks = torch.zeros(b, s, s, dtype=torch.bool, device=device)
    masks[1::2, s // 4: s // 2, s // 4: s // 2] = True  # the lesion images (odd indices) have a mask
    model = build_classifier(cfg["arch"], "gain", image_size=s, frozen_stages=frozen).to(device)
    with torch.no_grad():
        trunk = model.trunk(images)  # computed once, in float32, as the experiment caches it

    def from_trunk(m, cl):
        return m.loss(labels, masks, trunk=as_input(trunk, cl))["loss"]

    def with_mining(m, cl):
        return m.loss(labels, masks, trunk=as_input(trunk, cl), images=as_input(images, cl))["loss"]

    def from_images(m, cl):
        return m.loss(labels, masks, images=as_input(images, cl))["loss"]

    where = f"{cfg['arch']} {s} px, batch {b}, {frozen} stage(s) frozen"
    lines = [compare(f"GAIN from cached trunk ({where})", model, from_trunk, b, device, repeats, steps)]
    mining = build_classifier(cfg["arch"], "gain-am", image_size=s, frozen_stages=frozen).to(device)
    lines.append(compare("GAIN + attention mining (half lesion images)", mining, with_mining, b, device, repeats, steps))
    lines.append(compare("GAIN from images, whole network", model, from_images, b, device, repeats, steps))
    return lines


def segmenter_lines(variants, size: int, channels, batch: int, device: str, repeats: int, steps: int) -> list[dict]:
    from medad.models.ca_unet import build_segmenter

    torch.manual_seed(0)
    images = torch.rand(batch, 3, size, size, device=device)
    target = torch.zeros(batch, size, size, dtype=torch.long, device=device)
    target[:, size // 4: size // 2, size // 3: size // 2] = 1

    def seg_loss(m, cl):
        return F.cross_entropy(m(as_input(images, cl)).float(), target)

    return [compare(f"{variant} {size} px, channels {list(channels)}, batch {batch}", build_segmenter(variant, channels),
                    seg_loss, batch, device, repeats, steps) for variant in variants]


def main(argv=None) -> int:
    from medad import profiles
    from medad.models.ca_unet import VARIANTS
    from medad.runtime import device_description, resolve_device

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="long_cpu", help="a mapping of medad/profiles/egc.yml whose sizes are measured")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per model and precision (the best counts)")
    ap.add_argument("--steps", type=int, default=5, help="steps before the loss is compared")
    ap.add_argument("--no-224", action="store_true", help="skip CA-U-Net at 224 px with the full profile's widths")
    ap.add_argument("--only", choices=("classifiers", "segmenters"), default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = profiles.resolve_named("egc", args.profile)
    what = "CPU time of this process" if clock(device) is time.process_time else "wall time"
    print(f"device: {device_description(device)}; torch threads: {torch.get_num_threads()}; profile {args.profile}; "
          f"best of {args.repeats} steps ({what}), alternating; columns: float32, bf16 autocast + channels-last", flush=True)
    if args.only != "segmenters":
        classifier_lines(cfg, device, args.repeats, args.steps)
    if args.only != "classifiers":
        segmenter_lines(VARIANTS, cfg["seg_size"], cfg["seg_channels"], cfg["seg_batch_size"], device, args.repeats, args.steps)
        if not args.no_224:
            full = profiles.resolve_named("egc", "full")
            segmenter_lines(["ca-unet"], 224, full["seg_channels"], full["seg_batch_size"], device, args.repeats, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
