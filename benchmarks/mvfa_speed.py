"""MVFA's speed on this machine: adapter training and inference images/s, and memory-bank scoring
as one matrix product against a per-patch loop.

    python benchmarks/mvfa_speed.py                          # STAND-IN at 128 px, CPU, 1 thread
    python benchmarks/mvfa_speed.py --backbone clip-vit-l-14-336 --image-size 240 --device cuda

Real CLIP without weights is timed with random weights (speed does not depend on their
values) and the output says so. Inputs are random tensors: only the time is measured.
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> int:
    from medad.backbones import get_spec, load_backbone
    from medad.models import mvfa as M
    from medad.runtime import device_description, resolve_device

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="standin-effnet-lite0-minilm")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--levels", type=int, nargs="*", default=[4, 5, 7, 8])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--shots", type=int, default=4, help="K: the memory bank holds K normal images x 11 augmentations")
    ap.add_argument("--loop-patches", type=int, default=256, help="query patches timed with the per-patch loop")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    spec = get_spec(args.backbone)
    note = ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec.family == "standin":
            backbone = load_backbone(args.backbone, image_size=args.image_size, levels=args.levels, device=device)
        else:
            try:
                backbone = load_backbone(args.backbone, image_size=args.image_size, levels=args.levels, device=device)
            except Exception:  # no weights here: random weights time the same
                backbone = load_backbone(args.backbone, pretrained=None, image_size=args.image_size,
                                         levels=args.levels, device=device)
                note = " (random weights: no CLIP weights on this machine)"
    model = M.MVFA(backbone, levels=args.levels, seed=0)
    loss_fn = M.MVFALoss()
    text = torch.nn.functional.normalize(torch.randn(2, backbone.embed_dim, device=device), dim=1)
    s = args.image_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, s, s, generator=g).to(device)
    labels = torch.arange(args.batch, device=device) % 2
    masks = torch.zeros(args.batch, s, s, device=device)
    masks[1::2, s // 4: s // 2, s // 4: s // 2] = 1
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.999))

    def train_step():
        loss = loss_fn(model(x), text, labels, masks)
        opt.zero_grad()
        loss.backward()
        opt.step()

    bank_images = torch.randn(args.shots * 11, 3, s, s, generator=g).to(device)
    bank = M.build_memory_bank(model, bank_images)

    def infer():
        M.branch_scores(model, x, text, bank, map_size=min(s, 64), batch=args.batch)

    print(f"device: {device_description(device)}; torch threads: {torch.get_num_threads()}; "
          f"backbone {args.backbone}{' (STAND-IN)' if backbone.is_standin else ''}{note} at {s} px; "
          f"adapters after stages {args.levels}; batch {args.batch}; best of {args.repeats}")
    t_train = best_of(train_step, args.repeats)
    print(f"adapter training: {args.batch / t_train:.1f} images/s (forward, loss, backward, Adam step)")
    model.eval()
    with torch.no_grad():
        t_inf = best_of(infer, args.repeats)
    print(f"inference, both branches, memory bank of {bank.size} tokens per level: {args.batch / t_inf:.1f} images/s")

    # memory-bank scoring of the first level's tokens: one matrix product vs a loop over patches
    with torch.no_grad():
        query = model(x).seg[0]
        n = min(args.loop_patches, query.shape[0] * query.shape[1])
        q = query.reshape(-1, query.shape[-1])[:n][None]
        t_mat = best_of(lambda: M.memory_bank_scores(q, bank.seg[0]), args.repeats)
        t_loop = best_of(lambda: M.memory_bank_scores_loop(q.cpu(), bank.seg[0].cpu()), 1)
        same = torch.allclose(M.memory_bank_scores(q, bank.seg[0]).cpu(), M.memory_bank_scores_loop(q.cpu(), bank.seg[0].cpu()),
                              atol=1e-5)
    print(f"memory-bank scoring of {n} patches against {bank.size} tokens: matrix product {t_mat * 1e3:.2f} ms, "
          f"per-patch loop {t_loop * 1e3:.1f} ms, ratio {t_loop / t_mat:.1f}x (results equal: {same})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
