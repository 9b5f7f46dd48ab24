"""Seeded, group-aware splits.

Two rules hold everywhere in medad:

- a patient (``group``) never appears in two splits of the same dataset;
- every carve-out is seeded and documented in the loader that makes it.

LIDC's train/val/test split is by patient and committed as
``data/splits/lidc.json`` (made by :func:`make_group_split` with the seed and
fractions the file records), so every user trains and tests on the same
patients. A patient the file does not know (a user's own, larger LIDC crop
set) is placed by a stable hash of its id with the same fractions, and the
loader says how many were placed that way.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from medad.data.atomic import write_atomic
from medad.errors import ConfigError, DataError
from medad.paths import SPLITS_DIR

SPLITS = ("train", "val", "test")


def make_group_split(groups: Sequence[str], fractions=(0.7, 0.15, 0.15), seed: int = 0) -> dict[str, list[str]]:
    """Shuffle the distinct groups with ``seed`` and cut them by ``fractions`` into train/val/test."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise ConfigError(f"split seed must be a whole number in 0..2**63-1, got {seed!r}")
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    unique = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(unique))
    shuffled = [unique[i] for i in order]
    n_train = int(round(fractions[0] * len(unique)))
    n_val = int(round(fractions[1] * len(unique)))
    return {
        "train": sorted(shuffled[:n_train]),
        "val": sorted(shuffled[n_train : n_train + n_val]),
        "test": sorted(shuffled[n_train + n_val :]),
    }


def split_file(name: str) -> Path:
    return SPLITS_DIR / f"{name}.json"


def write_split_file(name: str, groups: Sequence[str], fractions=(0.7, 0.15, 0.15), seed: int = 0, note: str = "") -> Path:
    split = make_group_split(groups, fractions, seed)
    payload = {
        "dataset": name,
        "unit": "patient",
        "seed": seed,
        "fractions": list(fractions),
        "note": note,
        "counts": {k: len(v) for k, v in split.items()},
        **split,
    }
    path = split_file(name)
    write_atomic(path, json.dumps(payload, indent=1) + "\n")  # the committed split is never left half-written
    return path


def read_split_file(name: str) -> dict:
    path = split_file(name)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise DataError(f"split file {path} is missing; recreate it with `python -m medad data make-split {name}`") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"split file {path} is not valid JSON ({exc})") from exc
    for key in SPLITS:
        if key not in payload:
            raise DataError(f"split file {path} has no '{key}' list of patients")
    return payload


def hashed_split(group: str, fractions: Sequence[float], seed: int) -> str:
    """A stable split for a group the split file does not list: a hash of (seed, id) against the fractions."""
    h = int(hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()[:12], 16) / 16**12
    edges = np.cumsum(fractions)
    return SPLITS[int(np.searchsorted(edges, h, side="right"))] if h < edges[-1] else SPLITS[-1]


def assign_groups(groups: Sequence[str], payload: dict) -> tuple[dict[str, str], int]:
    """Map each group to its split using the split file; unknown groups are hashed. Returns (map, n_hashed)."""
    known = {g: s for s in SPLITS for g in payload[s]}
    result, hashed = {}, 0
    for g in set(groups):
        if g in known:
            result[g] = known[g]
        else:
            result[g] = hashed_split(g, payload["fractions"], payload["seed"])
            hashed += 1
    return result, hashed


def grouped_carve_out(groups: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the items whose group falls in a seeded ``fraction`` of the groups (e.g. val from train)."""
    unique = sorted(set(groups))
    rng = np.random.default_rng(seed)
    n_out = int(round(fraction * len(unique)))
    chosen = set(unique[i] for i in rng.permutation(len(unique))[:n_out])
    return np.array([g in chosen for g in groups], dtype=bool)


def stratified_carve_out(labels: Sequence[int], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask picking a seeded ``fraction`` of the items of each class."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        n_out = int(round(fraction * len(idx)))
        out[rng.permutation(idx)[:n_out]] = True
    return out


def carve(entries: Sequence, split: str, in_val: np.ndarray) -> list:
    """The ``val`` part (where ``in_val``) or the ``train`` part (the rest) of a folder's entries."""
    want_val = split == "val"
    return [e for e, v in zip(entries, in_val) if bool(v) == want_val]
