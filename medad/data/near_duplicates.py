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
from typing import Sequence

import numpy as np
from PIL import Image

from medad.data.archive import Archive
from medad.data.images import decode_image
from medad.runtime import cache_dir

THUMB = 16
THRESHOLD = 4.0
_VERSION = 1  # bump when the hash or grouping changes: old cache entries are then ignored


def thumbnail(image: np.ndarray) -> np.ndarray:
    """float32 (THUMB*THUMB,) gray BOX thumbnail of a uint8 (H, W) or (H, W, 3) image."""
    gray = Image.fromarray(image).convert("L")
    return np.asarray(gray.resize((THUMB, THUMB), Image.BOX), dtype=np.float32).ravel()


def pair_distances(thumbs: np.ndarray) -> np.ndarray:
    """(N, N) mean absolute difference between thumbnails, row by row (an (N, N, 256) array would not fit for large N)."""
    return np.stack([np.abs(thumbs - row).mean(axis=1) for row in thumbs]) if len(thumbs) else np.zeros((0, 0))


def near_duplicate_pairs(thumbs: np.ndarray, threshold: float = THRESHOLD) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose thumbnails differ by less than ``threshold`` gray levels."""
    close = np.triu(pair_distances(thumbs) < threshold, k=1)
    return [(int(i), int(j)) for i, j in zip(*np.nonzero(close))]


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
    return cache_dir() / "near-duplicates" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


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
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"threshold": threshold, "pairs": pairs}))
        tmp.replace(path)
    return pairs
