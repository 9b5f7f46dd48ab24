"""The dataset registry: ``open_dataset(name, split, data_dir)`` is the one way in.

Where the data comes from, in order: the ``data_dir`` argument, the
``MEDAD_DATA`` environment variable, else the dataset's synthetic counterpart
(the embedded default, always flagged ``synthetic=True`` and named so).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import yaml

from medad.data.archive import Archive
from medad.data.base import Dataset, DatasetSpec
from medad.data.checksums import verify_archive
from medad.errors import ConfigError, DataError
from medad.paths import DATA_MANIFEST_DIR

_REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    _REGISTRY[spec.name] = spec
    return spec


def list_datasets() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> DatasetSpec:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(list_datasets())}")
    return _REGISTRY[name]


@functools.lru_cache(maxsize=1)
def manifest() -> dict:
    """data/manifest.yml: archive names, checksums, download pages, licences, citations."""
    return yaml.safe_load((DATA_MANIFEST_DIR / "manifest.yml").read_text())


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The data directory: the argument, else MEDAD_DATA, else None (synthetic data)."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get("MEDAD_DATA") or None
    return Path(chosen).expanduser() if chosen else None


def locate_archive(name: str, data_dir: str | os.PathLike) -> Archive:
    entry = manifest()[name]
    return Archive.locate(Path(data_dir), entry["archive"], entry["top"], entry.get("download", ""))


def archive_checksum(archive: Archive, name: str) -> str:
    """Verify a ZIP against the manifest (once, cached); an extracted folder is marked unverified."""
    if not archive.is_zip:
        return "unverified (extracted folder)"
    return verify_archive(archive.path, manifest()[name].get("sha256"))


def open_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    *,
    synthetic: bool | None = None,
    seed: int = 0,
    n: int | None = None,
) -> Dataset:
    """Open one split of a registered dataset.

    name:      a registry name (``list_datasets()``)
    split:     one of the dataset's splits (``get_spec(name).splits``), usually train / val / test
    data_dir:  folder holding the archives; None falls back to MEDAD_DATA, then to synthetic data
    synthetic: force (True) or forbid (False) the synthetic counterpart
    seed:      seed of the synthetic generator and of seeded carve-outs (e.g. a val split)
    n:         number of synthetic samples (ignored for real data)
    """
    spec = get_spec(name)
    if split not in spec.splits:
        raise ConfigError(f"dataset {name!r} has no split {split!r}; choose one of: {', '.join(spec.splits)}")
    root = resolve_data_dir(data_dir)
    if synthetic is None:
        synthetic = root is None
    if synthetic:
        return spec.make_synthetic(split=split, seed=seed, n=n)
    if root is None:
        raise ConfigError(f"dataset {name!r}: real data asked for (synthetic=False) but no data directory given; set MEDAD_DATA or pass data_dir")
    key = spec.manifest_key
    archive = locate_archive(key, root)
    checksum = archive_checksum(archive, key)
    return spec.index_real(archive=archive, split=split, checksum=checksum, meta=manifest()[key], seed=seed)


def available_real(data_dir: str | os.PathLike | None = None) -> dict[str, bool]:
    """Which registered datasets have their archive (or folder) in the data directory."""
    root = resolve_data_dir(data_dir)
    found = {}
    for name in list_datasets():
        try:
            found[name] = root is not None and bool(locate_archive(get_spec(name).manifest_key, root))
        except DataError:  # missing archive or data dir: simply not available
            found[name] = False
    return found
