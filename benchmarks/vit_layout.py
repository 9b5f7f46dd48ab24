"""Batch-first against sequence-first ViT blocks on this CPU, side by side in one run.

open_clip builds its ViT blocks batch-first; torch's attention then works on a transposed view of its input, and
a linear layer on that view of a batch > 1 takes a slow path on a CPU (worst under bf16 autocast). medad runs the
blocks sequence-first (``medad.backbones.clip_openclip._sequence_first``): the same arithmetic, contiguous inputs.
This prints the seconds per block call of one ViT-L/14-336 block (random weights) at 240 px (290 tokens) for
inference and for a training step (forward and backward, the block frozen, its input requiring a gradient, as
under MVFA's adapters), in float32 and bf16 autocast (a bf16 token stream, as open_clip's patch embedding gives under autocast), and
the ratio.

    .venv/bin/python benchmarks/vit_layout.py [--batch 4] [--threads 1] [--repeats 3]
"""
from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch


def seconds(fn, repeats: int) -> float:
    fn()  # warm-up: first calls pick kernels
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from medad.backbones import BackboneWarning, load_backbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BackboneWarning)
        backbone = load_backbone("clip-vit-l-14-336", pretrained=None, image_size=240, resize="squash", seed=0)
    seq_first = backbone.model.visual.transformer.resblocks[0].requires_grad_(False)
    batch_first = copy.deepcopy(seq_first)
    batch_first.attn.batch_first = True
    tokens = 1 + backbone.grid(1)[0] * backbone.grid(1)[1]
    x = torch.randn(args.batch, tokens, backbone.stage_widths[0])
    inputs = {"batch-first (open_clip's build)": (batch_first, x),
              "sequence-first (medad)": (seq_first, x.transpose(0, 1).contiguous())}
    print(f"one ViT-L/14-336 block, batch {args.batch}, {tokens} tokens, {args.threads} thread(s), "
          f"seconds per call (mean of {args.repeats})")
    for precision in ("fp32", "bf16"):
        for mode in ("inference", "training step"):
            times = {}
            for layout, (block, inp) in inputs.items():
                # under bf16 autocast open_clip's patch embedding hands the blocks a bf16 stream
                inp = inp.to(torch.bfloat16) if precision == "bf16" else inp

                def call(block=block, inp=inp):
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                        if mode == "inference":
                            with torch.no_grad():
                                block(inp)
                        else:
                            leaf = inp.detach().requires_grad_(True)
                            block(leaf).float().sum().backward()
                times[layout] = seconds(call, args.repeats)
            slow, fast = times.values()
            print(f"{precision:5s} {mode:14s} " + "  ".join(f"{k}: {v:.3f} s" for k, v in times.items())
                  + f"  ratio {slow / fast:.1f}x")


if __name__ == "__main__":
    main()
