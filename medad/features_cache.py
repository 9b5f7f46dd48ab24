"""Frozen image features computed once and kept on disk.

When the image encoder is frozen (ViP, CoOp, linear probes), its output for an
image never changes, so training can read the global embeddings from a file
instead of running the encoder every step. A cache file is named after what it
holds, ``<cache>/features/<backbone>/<dataset>-<split>-<subset>.pt``, and
records its full key: backbone name and weights, dataset name, split, archive
checksum, preprocessing, and a digest of the image ids. Loading a file whose
key differs from the one asked for (another backbone's weights, another
archive version, another preprocessing) raises :class:`~medad.errors.DataError`
naming the file and the differing fields, instead of silently training on
features of something else. ``refresh=True`` recomputes and overwrites.

Extraction writes a ``.partial`` file every ``save_every`` images, so an
interrupted long run resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medad.errors import DataError

FORMAT_VERSION = 1


@dataclass
class CachedFeatures:
    """Global image embeddings (n, D) of one dataset split, with labels and ids in the dataset's order."""

    features: torch.Tensor
    labels: np.ndarray
    ids: list[str]
    key: dict
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.labels)


def dataset_ids(ds) -> list[str]:
    """Image ids of a dataset without decoding any image."""
    if hasattr(ds, "entries"):
        return [e.image for e in ds.entries]
    if hasattr(ds, "_ids"):
        return list(ds._ids)
    return [ds[i].id for i in range(len(ds))]


def cache_key(backbone, ds, ids: Sequence[str]) -> dict:
    """Everything that decides the features: change any of it and the cached file no longer applies."""
    return {
        "format": FORMAT_VERSION,
        "backbone": backbone.name,
        "weights": backbone.weights_source,
        "preprocessing": repr(backbone.preprocess),
        "dataset": ds.name,
        "synthetic": bool(ds.synthetic),
        "split": ds.split,
        "archive_checksum": ds.checksum,
        "n_images": len(ids),
        "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
    }


def cache_path(backbone_name: str, dataset: str, split: str, subset: str = "all", root: Path | None = None) -> Path:
    from medad.runtime import cache_dir

    base = Path(root) if root is not None else cache_dir() / "features"
    return base / backbone_name / f"{dataset}-{split}-{subset}.pt"


def _check_key(path: Path, found: dict, expected: dict) -> None:
    differing = [k for k in expected if found.get(k) != expected[k]]
    if differing:
        detail = "; ".join(f"{k}: file has {found.get(k)!r}, expected {expected[k]!r}" for k in differing)
        raise DataError(f"{path}: cached image features do not match what was asked for ({detail}). "
                        f"Delete the file or pass refresh=True to recompute it.")


def load_cached(path: Path, expected: dict) -> CachedFeatures:
    """Read a cache file and check its key; DataError (naming the file) when unreadable or mismatched."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated, foreign or corrupt: say which file
        raise DataError(f"{path}: not a readable feature cache file ({type(exc).__name__}: {exc}); delete it to recompute") from exc
    if not isinstance(blob, dict) or not {"key", "features", "labels", "ids"} <= set(blob):
        raise DataError(f"{path}: not a medad feature cache file (expected keys key, features, labels, ids)")
    _check_key(path, blob["key"], expected)
    return CachedFeatures(blob["features"], np.asarray(blob["labels"]), list(blob["ids"]), blob["key"], path)


def _save(path: Path, blob: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(blob, tmp)
    tmp.replace(path)  # atomic: a parallel reader never sees half a file


@torch.no_grad()
def image_features(backbone, ds, *, subset: str = "all", batch_size: int = 32, root: Path | None = None,
                   refresh: bool = False, save_every: int = 256, progress: bool = True) -> CachedFeatures:
    """The backbone's global image embeddings of every image of ``ds``, from the cache or computed and cached.

    subset: a short name for a restricted dataset (e.g. ``"n1000-s0"``), part of the file name; the key's
            id digest guards against two different subsets under one name.
    """
    ids = dataset_ids(ds)
    key = cache_key(backbone, ds, ids)
    path = cache_path(backbone.name, ds.name + ("-synthetic" if ds.synthetic else ""), ds.split, subset, root)
    if path.is_file() and not refresh:
        return load_cached(path, key)
    partial = path.with_name(path.name + ".partial")
    done: list[torch.Tensor] = []
    if partial.is_file() and not refresh:
        try:
            blob = torch.load(partial, map_location="cpu", weights_only=False)
            if blob.get("key") == key:
                done = [blob["features"]]
        except Exception:  # a broken partial file only costs recomputation
            done = []
    start = int(sum(len(d) for d in done))
    from tqdm import tqdm

    bar = tqdm(total=len(ids), initial=start, desc=f"features {backbone.name} {ds.name}/{ds.split}",
               disable=not progress, leave=False)
    pending: list[torch.Tensor] = []
    for lo in range(start, len(ids), batch_size):
        images = [ds[i].image for i in range(lo, min(lo + batch_size, len(ids)))]
        emb = backbone.encode_image(backbone.preprocess_batch(images), levels=()).embedding.float().cpu()
        pending.append(emb)
        bar.update(len(images))
        if sum(len(p) for p in pending) >= save_every:
            done.append(torch.cat(pending))
            pending = []
            _save(partial, {"key": key, "features": torch.cat(done)})
            done = [torch.cat(done)]
    bar.close()
    features = torch.cat(done + pending) if (done or pending) else torch.empty(0, backbone.embed_dim)
    if len(features) != len(ids):
        raise DataError(f"{path}: extracted {len(features)} feature rows for {len(ids)} images")
    blob = {"key": key, "features": features, "labels": np.asarray(ds.labels), "ids": ids}
    _save(path, blob)
    partial.unlink(missing_ok=True)
    return CachedFeatures(features, np.asarray(ds.labels), ids, key, path)


def stratified_subset(labels: np.ndarray, n: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded subset of ``n`` items keeping class proportions (all items when n is None)."""
    labels = np.asarray(labels)
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    picked = []
    classes = np.unique(labels)
    for c in classes:
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(n * len(idx) / len(labels))))
        picked.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(picked))


def split_features(backbone, dataset: str, split: str, data_dir=None, max_images: int | None = None,
                   subset_seed: int = 0, **kwargs) -> CachedFeatures:
    """Cached features of one split of a registered dataset, optionally a seeded stratified subset of it."""
    from medad.data import open_dataset

    # A synthetic split is a fixed set of images, as a real one is: the subset is drawn from it the same way,
    # so every reader of the split (test groups, provenance) sees the images the features came from.
    ds = open_dataset(dataset, split, data_dir)
    subset = "all"
    if max_images is not None and max_images < len(ds):
        ds = ds.subset(stratified_subset(ds.labels, max_images, subset_seed).tolist())
        subset = f"n{max_images}-s{subset_seed}"
    elif max_images is not None and max_images > len(ds):
        warnings.warn(f"{ds.display_name} {split}: {max_images} images asked for, the split has {len(ds)}; all {len(ds)} are used",
                      stacklevel=2)
    return image_features(backbone, ds, subset=subset, **kwargs)
