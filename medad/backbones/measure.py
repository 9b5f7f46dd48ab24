"""Embedding whole datasets and timing image encoders (used by the Backbones appendix and the benchmark)."""
from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from medad.backbones.base import BackboneWarning
from medad.backbones.weights import WeightsNotFound


@torch.no_grad()
def embed_images(backbone, images, batch_size: int = 16) -> np.ndarray:
    """Global embeddings (n, embed_dim) of uint8 images, in batches."""
    out = []
    for start in range(0, len(images), batch_size):
        x = backbone.preprocess_batch(images[start:start + batch_size])
        out.append(backbone.encode_image(x, levels=()).embedding.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, backbone.embed_dim), np.float32)


def load_for_speed(name: str, device: str = "cpu"):
    """(backbone, note): the pretrained weights when available, else random weights -- speed does not depend on them."""
    from medad.backbones import load_backbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BackboneWarning)
        try:
            b = load_backbone(name, device=device)
        except WeightsNotFound:
            b = load_backbone(name, pretrained=None, device=device)
    return b, ("pretrained" if b.pretrained else "random weights (speed only)")


@torch.no_grad()
def encode_speed(backbone, n_images: int = 16, repeats: int = 3, seed: int = 0) -> dict:
    """Images per second of ``encode_image`` (default levels, batch ``n_images``) after one warm-up batch."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_images, 3, backbone.image_size, backbone.image_size, generator=g).to(backbone.device)
    backbone.encode_image(x)  # warm-up: allocations, kernel choice
    times = []
    for _ in range(repeats):
        if x.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        backbone.encode_image(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    best = min(times)  # the least disturbed run on a shared machine
    return {"images_per_s": n_images / best, "seconds_per_batch": best, "batch": n_images, "repeats": repeats,
            "image_size": backbone.image_size}


def knn_accuracy(embeddings: np.ndarray, labels, k: int = 5) -> float:
    """Leave-one-out k-nearest-neighbour accuracy by cosine similarity (majority vote, ties to the nearest)."""
    labels = np.asarray(labels)
    if len(labels) <= k:
        return float("nan")
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)  # leave the image itself out
    neighbours = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    hits = 0
    for i, row in enumerate(neighbours):
        votes = labels[row]
        values, counts = np.unique(votes, return_counts=True)
        best = values[counts == counts.max()]
        pick = next(v for v in votes if v in best)  # a tie goes to the nearer neighbour's label
        hits += pick == labels[i]
    return hits / len(labels)
