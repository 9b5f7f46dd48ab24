"""LIDC-IDRI lung-nodule crops with four grader masks (Armato et al., 2011).

Public layout (the "LIDC-IDRI slices" crops)::

    LIDC-IDRI-slices/<patient>/nodule-<k>/images/slice-<j>.png     128x128 8-bit CT crop
    LIDC-IDRI-slices/<patient>/nodule-<k>/mask-<g>/slice-<j>.png   g = 0..3, 0/255; empty = grader g did not mark it

A patient has several nodules and a nodule several slices, so the split is by
patient (``data/splits/lidc.json``: 70/15/15 % of the 875 patients, seed 0;
see :mod:`medad.data.splits`). ``Sample.grader_masks`` holds the four masks,
``Sample.mask`` their union.
"""
from __future__ import annotations

import hashlib
import re
import warnings
from functools import partial

import numpy as np

from medad.data.base import ArchiveDataset, ArrayDataset, DatasetSpec, Entry
from medad.data.registry import register
from medad.data.splits import assign_groups, read_split_file
from medad.data.synthetic import synthetic_lidc
from medad.data.atomic import atomic_target
from medad.errors import CacheWarning, DataError
from medad.runtime import cache_dir

N_GRADERS = 4
_IMAGE = re.compile(r"^(?P<top>[^/]+)/(?P<patient>[^/]+)/(?P<nodule>[^/]+)/images/(?P<slice>[^/]+\.png)$")


def index_entries(names: list[str]) -> list[Entry]:
    """Pair every slice image with its four grader masks; a missing mask is an error, not a skip."""
    present = set(names)
    entries = []
    for name in sorted(names):
        m = _IMAGE.match(name)
        if not m:
            continue
        base = f"{m['top']}/{m['patient']}/{m['nodule']}"
        masks = tuple(f"{base}/mask-{g}/{m['slice']}" for g in range(N_GRADERS))
        missing = [mk for mk in masks if mk not in present]
        if missing:
            raise DataError(f"LIDC slice {name} lacks grader mask(s) {', '.join(missing)}; every slice needs mask-0..3")
        entries.append(Entry(image=name, masks=masks, group=m["patient"]))
    if not entries:
        raise DataError("LIDC archive holds no '<patient>/<nodule>/images/<slice>.png' entries; is it the LIDC-IDRI-slices layout?")
    return entries


def index_real(*, archive, split, checksum, meta, seed=0) -> ArchiveDataset:
    entries = index_entries(archive.names())
    where, hashed = assign_groups([e.group for e in entries], read_split_file("lidc"))
    if hashed:
        warnings.warn(f"LIDC: {hashed} patients are not in data/splits/lidc.json; placed by a stable hash of their id")
    return ArchiveDataset(
        name="lidc",
        split=split,
        classes=(),
        archive=archive,
        entries=[e for e in entries if where[e.group] == split],
        checksum=checksum,
        citation=meta["citation"],
        image_mode="L",
        grader_masks=True,
    )


def load_arrays(ds, progress: bool = True) -> dict:
    """All of a split as arrays: images uint8 (N,H,W), grader_masks bool (N,4,H,W), groups (N,).

    Real splits are decoded once and cached under the medad cache folder
    (masks bit-packed: about 25 kB per slice), keyed by the archive checksum
    and the exact list of entries.
    """
    if isinstance(ds, ArrayDataset):
        return {"images": ds.images, "grader_masks": ds.grader_masks, "groups": np.array(ds.groups)}
    # an extracted folder has no checksum: its files' sizes and mtimes stand for its contents
    state = ds.checksum if ds.archive.is_zip else ds.archive.fingerprint()
    key = hashlib.sha256((state + "\n".join(e.image for e in ds.entries)).encode()).hexdigest()[:20]
    try:
        path = cache_dir() / f"lidc-{ds.split}-{key}.npz"
    except OSError as exc:
        warnings.warn(CacheWarning(f"cache folder cannot be created ({exc.strerror or exc}); the LIDC split is decoded "
                                   "without caching it (set MEDAD_CACHE to a writable folder)"), stacklevel=2)
        path = None
    if path is not None and path.is_file():
        with np.load(path) as z:
            shape = tuple(z["mask_shape"])
            masks = np.unpackbits(z["grader_bits"], count=int(np.prod(shape))).reshape(shape).astype(bool)
            return {"images": z["images"], "grader_masks": masks, "groups": z["groups"]}
    from tqdm.auto import tqdm

    first = ds[0]
    images = np.empty((len(ds),) + first.image.shape, np.uint8)
    masks = np.empty((len(ds), N_GRADERS) + first.image.shape, bool)
    for i in tqdm(range(len(ds)), desc=f"decoding LIDC {ds.split}", disable=not progress, mininterval=2):
        sample = ds[i]
        if sample.image.shape != images.shape[1:]:
            raise DataError(f"{sample.id}: image is {sample.image.shape}, expected {images.shape[1:]} like the rest of the split")
        images[i], masks[i] = sample.image, sample.grader_masks
    groups = np.array(ds.groups)
    if path is None:
        return {"images": images, "grader_masks": masks, "groups": groups}
    try:
        with atomic_target(path) as tmp:
            np.savez(tmp, images=images, grader_bits=np.packbits(masks), mask_shape=np.array(masks.shape), groups=groups)
    except OSError as exc:  # the arrays are decoded; only the cache is lost
        warnings.warn(CacheWarning(f"cache folder {path.parent}: cannot write {path.name} ({exc.strerror or exc}); "
                                   "the LIDC split will be decoded again next time"), stacklevel=2)
    return {"images": images, "grader_masks": masks, "groups": groups}


def grader_count(grader_masks: np.ndarray) -> np.ndarray:
    """How many graders marked each slice: (N, G, H, W) -> (N,) ints in 0..G."""
    return grader_masks.reshape(grader_masks.shape[0], grader_masks.shape[1], -1).any(axis=2).sum(axis=1)


SPEC = register(
    DatasetSpec(
        name="lidc",
        title="LIDC-IDRI lung CT nodule crops, 4 grader masks",
        splits=("train", "val", "test"),
        classes=(),
        index_real=index_real,
        make_synthetic=partial(synthetic_lidc),
        modality="CT",
        tasks=("ambiguous segmentation", "pixel-level anomaly segmentation"),
    )
)
