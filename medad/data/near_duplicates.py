"""Near-duplicate images, grouped by a perceptual hash, so that a split never puts near-copies on two sides.

The hash is a 16x16 grayscale thumbnail (PIL's BOX filter: each thumbnail
pixel is the mean of its block, so JPEG noise and small shifts average out).
Two images are near-duplicates when their thumbnails differ by less than
``THRESHOLD`` gray levels on average (mean absolute difference, 0-255 scale);
groups are the connected components of that relation (a ~ b and b ~ c puts
a, b, c in one group even when a and c differ more).

Threshold 4 is the data README's definition of "near-identical". Measured on
``hyper-kvasir-normal.zip`` (719 frames): 90 pairs / 138 images below 4 gray
levels; 56 / 97 below 3 and 128 / 176 below 5, so the count moves smoothly
with the threshold and 4 sits among frames that look the same by eye (the
data atlas shows a panel of the groups found). Thumbnails of the whole archive
take about a second; the groups are cached per archive file (path, size,
modification time) under :func:`medad.runtime.cache_dir`.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from typing import Sequence

import numpy as np
from PIL import Image

from medad.data.archive import Archive
from medad.data.atomic import write_atomic
from medad.data.images import decode_image
from medad.errors import CacheWarning
from medad.runtime import cache_dir

THUMB = 16
THRESHOLD = 4.0
_VERSION = 1  # bump when the hash or grouping changes: old cache entries are then ignored


def thumbnail(image: np.ndarray) -> np.ndarray:
    """float32 (THUMB*THUMB,) gray BOX thumbnail of a uint8 (H, W) or (H, W, 3) image."""
    gray = Image.fromarray(image).convert("L")
    return np.asarray(gray.resize((THUMB, THUMB), Image.BOX), dtype=np.float32).ravel()


def near_duplicate_pairs(thumbs: np.ndarray, threshold: float = THRESHOLD) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose thumbnails differ by less than ``threshold`` gray levels.

    Row by row, keeping only the pairs: an (N, N) distance matrix would not fit
    for the full HyperKvasir release (10,662 labelled frames).
    """
    pairs = []
    for i in range(len(thumbs) - 1):
        close = np.abs(thumbs[i + 1:] - thumbs[i]).mean(axis=1) < threshold
        pairs += [(i, i + 1 + int(j)) for j in np.flatnonzero(close)]
    return pairs


def components(n: int, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """Connected components of ``pairs`` over 0..n-1: each item's component is its smallest member."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        a, b = find(i), find(j)
        parent[max(a, b)] = min(a, b)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def _cache_file(archive: Archive, names: Sequence[str], threshold: float):
    if not archive.is_zip:
        return None  # an extracted folder has no single stamp to key on; recomputed (about a second per 1,000 images)
    st = archive.path.stat()
    key = json.dumps([_VERSION, THUMB, threshold, str(archive.path.resolve()), st.st_size, st.st_mtime_ns, list(names)])
    try:
        return cache_dir() / "near-duplicates" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"
    except OSError as exc:
        warnings.warn(CacheWarning(f"cache folder cannot be created ({exc.strerror or exc}); near-duplicates are "
                                   "computed without caching them (set MEDAD_CACHE to a writable folder)"), stacklevel=3)
        return None


def archive_pairs(archive: Archive, names: Sequence[str], threshold: float = THRESHOLD) -> list[tuple[int, int]]:
    """Near-duplicate pairs among the archive entries ``names`` (indices into ``names``), cached per archive file."""
    path = _cache_file(archive, names, threshold)
    if path is not None and path.is_file():
        try:
            return [tuple(p) for p in json.loads(path.read_text())["pairs"]]
        except (json.JSONDecodeError, KeyError, TypeError):
            pass  # a damaged cache entry is simply recomputed
    thumbs = np.stack([thumbnail(decode_image(archive.read(n), archive.where(n), "RGB")) for n in names]) if names else np.zeros((0, THUMB * THUMB))
    pairs = near_duplicate_pairs(thumbs, threshold)
    if path is not None:
        try:
            write_atomic(path, json.dumps({"threshold": threshold, "pairs": pairs}))
        except OSError as exc:  # the pairs are computed; only the cache is lost
            warnings.warn(CacheWarning(f"cache folder {path.parent}: cannot write ({exc.strerror or exc}); "
                                       "near-duplicates will be computed again next time"), stacklevel=2)
    return pairs
