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

Training augmentation through the cache (:func:`augmented_views`,
:class:`CachedViews`). The official ViP/CoOp training re-encodes every image at
every step after Dassl's ``random_resized_crop`` (scale 0.08-1, aspect 3/4-4/3,
bicubic) and ``random_flip`` (``configs/trainers/ViP/*.yaml``; Dassl
``dassl/data/transforms/transforms.py``, ``_build_transform_train``). Here each
training image gets ``n_views`` such views, drawn from a generator seeded by
(seed, image id, view), each encoded once and cached
(``<dataset>-<split>-<subset>-views<V>-seed<S>.pt``, key = the features' key
plus view count, seed and augmentation); the training loop draws one view per
image per step (:meth:`CachedViews.draw`). This is a finite sample of the
augmentation distribution, not a fresh crop per step: with V views an image is
seen under at most V crops over the whole schedule. Evaluation keeps the centre
crop (:func:`image_features`), as Dassl's test transform does.
"""
from __future__ import annotations

import hashlib
import math
import os
import zlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medad.data.subsets import stratified_subset
from medad.errors import ConfigError, DataError

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


def _resume(partial: Path, key: dict, refresh: bool) -> list[torch.Tensor]:
    """The rows an interrupted extraction saved under the same key ([] when none, foreign or unreadable)."""
    if refresh or not partial.is_file():
        return []
    try:
        blob = torch.load(partial, map_location="cpu", weights_only=False)
    except Exception:  # a broken partial file only costs recomputation
        return []
    return [blob["features"]] if isinstance(blob, dict) and blob.get("key") == key else []


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
    done = _resume(partial, key, refresh)
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
    return _finish(CachedFeatures, path, partial, key, features, ds, ids)


def _finish(kind, path: Path, partial: Path, key: dict, features: torch.Tensor, ds, ids: list[str]):
    """Check one feature row per image, write the cache file atomically, drop the partial file."""
    if len(features) != len(ids):
        raise DataError(f"{path}: extracted {len(features)} feature rows for {len(ids)} images")
    labels = np.asarray(ds.labels)
    _save(path, {"key": key, "features": features, "labels": labels, "ids": ids})
    partial.unlink(missing_ok=True)
    return kind(features, labels, ids, key, path)


def open_subset(dataset: str, split: str, data_dir=None, max_images: int | None = None, subset_seed: int = 0):
    """(dataset, subset name) of one split of a registered dataset, optionally a seeded stratified subset of it."""
    from medad.data import open_dataset

    return subset_of(open_dataset(dataset, split, data_dir), max_images, subset_seed)


def subset_of(ds, max_images: int | None = None, subset_seed: int = 0):
    """(dataset, subset name): ``ds`` itself (``"all"``), or its seeded stratified subset of ``max_images`` images.

    A synthetic split is a fixed set of images, as a real one is: the subset is drawn from it the same way,
    so every reader of the split (test labels and groups, provenance) sees the images the features came from.
    """
    subset = "all"
    if max_images is not None and max_images < len(ds):
        ds = ds.subset(stratified_subset(ds.labels, max_images, subset_seed).tolist())
        subset = f"n{max_images}-s{subset_seed}"
    elif max_images is not None and max_images > len(ds):
        warnings.warn(f"{ds.display_name} {ds.split}: {max_images} images asked for, the split has {len(ds)}; all {len(ds)} are used",
                      stacklevel=3)
    return ds, subset


def split_features(backbone, dataset: str, split: str, data_dir=None, max_images: int | None = None,
                   subset_seed: int = 0, **kwargs) -> CachedFeatures:
    """Cached features of one split of a registered dataset, optionally a seeded stratified subset of it."""
    ds, subset = open_subset(dataset, split, data_dir, max_images, subset_seed)
    return image_features(backbone, ds, subset=subset, **kwargs)


def split_views(backbone, dataset: str, split: str, data_dir=None, max_images: int | None = None,
                subset_seed: int = 0, *, n_views: int, seed: int, **kwargs) -> "CachedViews":
    """Cached augmented views of one split (the same images, in the same order, as :func:`split_features`)."""
    ds, subset = open_subset(dataset, split, data_dir, max_images, subset_seed)
    return augmented_views(backbone, ds, n_views=n_views, seed=seed, subset=subset, **kwargs)


# ---- training augmentation: several seeded views per image, encoded once -------------------------------------

# Dassl's train transform for TRANSFORMS [random_resized_crop, random_flip, normalize] with its defaults
# (INPUT.RRCROP_SCALE (0.08, 1.0); torchvision's RandomResizedCrop ratio (3/4, 4/3); INTERPOLATION bicubic in
# ViP's configs; RandomHorizontalFlip p = 0.5).
AUGMENTATION = {"crop": "random_resized_crop", "scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3),
                "interpolation": "bicubic", "flip": "horizontal", "flip_p": 0.5}


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator, scale=AUGMENTATION["scale"],
                            ratio=AUGMENTATION["ratio"]) -> tuple[int, int, int, int]:
    """(left, top, w, h) of a random crop: torchvision's ``RandomResizedCrop.get_params`` rule, from ``rng``.

    Up to 10 tries of an area uniform in ``scale`` x image area and an aspect ratio log-uniform in ``ratio``;
    the first that fits is placed uniformly. Otherwise the centre crop, its aspect clamped into ``ratio``.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            return left, top, w, h
    image_ratio = width / height
    if image_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif image_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def view_rng(seed: int, image_id: str, view: int) -> np.random.Generator:
    """The generator of one view of one image: independent of batch size, order and subset."""
    return np.random.default_rng([int(seed), zlib.crc32(image_id.encode()), int(view)])


def augmented_view(image, preprocess, rng: np.random.Generator) -> torch.Tensor:
    """One training view (3, S, S): random resized crop to S x S (bicubic), horizontal flip with p = 0.5, normalise."""
    from PIL import Image

    pil = preprocess.to_pil(image)
    left, top, w, h = random_resized_crop_box(pil.width, pil.height, rng)
    size = preprocess.size
    pil = pil.crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)
    if rng.random() < AUGMENTATION["flip_p"]:
        pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
    x = torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    return (x - preprocess.mean) / preprocess.std


@dataclass
class CachedViews(CachedFeatures):
    """Embeddings of ``n_views`` augmented views per image: ``features`` is (n, V, D), one row of views per image."""

    @property
    def n_views(self) -> int:
        return int(self.features.shape[1])

    def draw(self, indices, generator: torch.Generator) -> torch.Tensor:
        """One view per image, uniform over the V views: features (len(indices), D) for a training step."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        if idx.ndim != 1 or (len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= len(self))):
            raise DataError(f"{self.path or 'cached views'}: indices must be a 1-d list in 0..{len(self) - 1}")
        views = torch.randint(self.n_views, (len(idx),), generator=generator)
        return self.features[idx, views]


def views_key(backbone, ds, ids: Sequence[str], n_views: int, seed: int) -> dict:
    """The features' key plus what decides the views: their number, seed and augmentation."""
    return {**cache_key(backbone, ds, ids), "views": int(n_views), "view_seed": int(seed),
            "augmentation": repr(sorted(AUGMENTATION.items()))}


@torch.no_grad()
def augmented_views(backbone, ds, *, n_views: int, seed: int, subset: str = "all", batch_size: int = 32,
                    root: Path | None = None, refresh: bool = False, save_every: int = 64,
                    progress: bool = True) -> CachedViews:
    """``n_views`` seeded augmented views of every image of ``ds``, encoded by ``backbone``, cached on disk.

    Resumes from a ``.partial`` file written every ``save_every`` images. A cached file whose key differs
    (other views, seed, augmentation, weights, archive or preprocessing) is a DataError naming the fields.
    """
    if isinstance(n_views, bool) or not isinstance(n_views, int) or n_views < 1:
        raise ConfigError(f"n_views must be a positive integer, got {n_views!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"the views' seed must be a non-negative integer, got {seed!r}")
    ids = dataset_ids(ds)
    key = views_key(backbone, ds, ids, n_views, seed)
    name = ds.name + ("-synthetic" if ds.synthetic else "")
    path = cache_path(backbone.name, name, ds.split, f"{subset}-views{n_views}-seed{seed}", root)
    if path.is_file() and not refresh:
        blob = load_cached(path, key)
        return CachedViews(blob.features, blob.labels, blob.ids, blob.key, path)
    partial = path.with_name(path.name + ".partial")
    rows = _resume(partial, key, refresh)
    start = int(sum(len(r) for r in rows))
    from tqdm import tqdm

    bar = tqdm(total=len(ids), initial=start, desc=f"views x{n_views} {backbone.name} {ds.name}/{ds.split}",
               disable=not progress, leave=False)
    device = backbone.device
    per_batch = max(1, batch_size // n_views)  # images per encoder call, so a call holds about batch_size views
    since_save = 0
    for lo in range(start, len(ids), per_batch):
        hi = min(lo + per_batch, len(ids))
        images = [ds[i].image for i in range(lo, hi)]  # decoded once for all its views
        views = [augmented_view(images[i - lo], backbone.preprocess, view_rng(seed, ids[i], v))
                 for i in range(lo, hi) for v in range(n_views)]
        emb = backbone.encode_image(torch.stack(views).to(device), levels=()).embedding.float().cpu()
        rows.append(emb.reshape(hi - lo, n_views, -1))
        bar.update(hi - lo)
        since_save += hi - lo
        if since_save >= save_every and hi < len(ids):
            rows = [torch.cat(rows)]
            _save(partial, {"key": key, "features": rows[0]})
            since_save = 0
    bar.close()
    features = torch.cat(rows) if rows else torch.empty(0, n_views, backbone.embed_dim)
    return _finish(CachedViews, path, partial, key, features, ds, ids)
