"""The dataset registry: ``open_dataset(name, split, data_dir)`` is the one way in.

Where the data comes from, in order: the ``data_dir`` argument, the
``MEDAD_DATA`` environment variable, else the dataset's synthetic counterpart
(the embedded default, always flagged ``synthetic=True`` and named so).

Synthetic data is used only when no data directory was given at all (or when
a caller asks for it with ``synthetic=True``). When one was given, a dataset
whose archive is missing, truncated, unreadable or fails its checksum there
is a DataError naming the folder, the archive expected and what is wrong;
:func:`archive_status` says the same without raising (``data list``).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from medad.data.archive import Archive
from medad.data.base import Dataset, DatasetSpec
from medad.data.checksums import verify_archive
from medad.errors import ChecksumError, ConfigError, DataError
from medad.paths import DATA_MANIFEST_DIR

_REGISTRY: dict[str, DatasetSpec] = {}


class DataDirectoryError(DataError, ConfigError):
    """The data directory given does not exist: a bad parameter (ConfigError) about the data (DataError)."""


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


def resolve_data_dir(data_dir: str | os.PathLike | None = None, base: str | os.PathLike | None = None) -> Path | None:
    """The data directory, as an absolute path: the argument, else MEDAD_DATA, else None (synthetic data).

    A relative path is taken relative to ``base`` (default: the current working
    directory), here, where the caller typed it, before it travels anywhere else
    (a notebook kernel runs in ``notebooks/``). A directory that was given but
    does not exist is a DataError, never a quiet switch to synthetic data; a
    value that is not a path (``0``, ``""``) is a ConfigError.
    """
    given = data_dir is not None
    if given and (isinstance(data_dir, bool) or not isinstance(data_dir, (str, os.PathLike))):
        raise ConfigError(f"data_dir must be a folder path (text) or None for synthetic data, got {data_dir!r} "
                          f"({type(data_dir).__name__})")
    if given and not str(os.fspath(data_dir)).strip():
        raise ConfigError("data_dir / --data-dir is empty; give the folder holding the archives, or leave it out "
                          "(then MEDAD_DATA, else synthetic data)")
    chosen = data_dir if given else os.environ.get("MEDAD_DATA") or None
    if not chosen:
        return None
    root = Path(chosen).expanduser()
    if not root.is_absolute():
        root = Path(base if base is not None else os.getcwd()) / root
    root = Path(os.path.normpath(root))
    if not root.is_dir():
        source = "the data_dir / --data-dir argument" if given else "MEDAD_DATA"
        raise DataDirectoryError(
            f"data directory {root} (from {source}: {os.fspath(chosen)!r}) does not exist or is not a folder; point it "
            "at the folder holding the archives, or give no data directory to run on synthetic data"
        )
    return root


def locate_archive(name: str, data_dir: str | os.PathLike) -> Archive:
    entry = manifest()[name]
    return Archive.locate(Path(data_dir), entry["archive"], entry["top"], entry.get("download", ""))


UNVERIFIED = "unverified (no published checksum)"


def archive_checksum(archive: Archive, name: str, fresh: bool = False) -> str:
    """Verify a ZIP against the manifest and say how far it was checked.

    ``fresh``: hash the bytes (once per process), never trusting the on-disk cache
    (``data verify``, and before a checksum is recorded in provenance).

    Returns the SHA-256 when it matched the manifest's; otherwise a text that
    starts with "unverified" (no published checksum, or an extracted folder).
    A mismatch raises ChecksumError.
    """
    if not archive.is_zip:
        return "unverified (extracted folder)"
    expected = manifest()[name].get("sha256")
    actual = verify_archive(archive.path, expected, fresh=fresh)
    return actual if expected else f"{UNVERIFIED}; sha256 {actual}"


@dataclass(frozen=True)
class ArchiveStatus:
    """What the data directory holds for one data/manifest.yml entry, and why it is or is not usable.

    state: "verified", "unverified" (usable) or "missing", "truncated",
           "unreadable", "checksum mismatch", "no data directory" (not usable)
    detail: one sentence naming the folder, the archive expected and what is wrong (or the checksum)
    """

    key: str
    state: str
    detail: str
    archive: Archive | None = None
    checksum: str = ""

    @property
    def usable(self) -> bool:
        return self.state in ("verified", "unverified")

    @property
    def found(self) -> bool:
        """An archive (or folder) is there, whatever its state."""
        return self.state not in ("missing", "no data directory")


def archive_status(key: str, data_dir: str | os.PathLike | None, fresh: bool = False) -> ArchiveStatus:
    """Locate, size-check, open and checksum one archive; never raises for a bad archive, it says why instead.

    ``fresh``: hash the archive's bytes rather than trust a cached verdict (see :mod:`medad.data.checksums`).
    """
    entry = manifest()[key]
    expected_name = entry["archive"]
    if data_dir is None:
        return ArchiveStatus(key, "no data directory", "no data directory given (synthetic data)")
    try:
        path_hint = Path(data_dir) / expected_name
        size = entry.get("size")
        if size and path_hint.is_file() and path_hint.stat().st_size != size:
            got = path_hint.stat().st_size
            what = "truncated" if got < size else "checksum mismatch"
            return ArchiveStatus(key, what, f"{path_hint} is {got:,} bytes, expected {size:,} ({'an incomplete download' if got < size else 'not the published archive'}); download it again")
        archive = locate_archive(key, data_dir)
    except DataError as exc:  # no such file or folder, or a file that is not a ZIP
        return ArchiveStatus(key, "unreadable" if path_hint.is_file() else "missing", str(exc))
    try:
        checksum = archive_checksum(archive, key, fresh=fresh)
    except ChecksumError as exc:
        return ArchiveStatus(key, "checksum mismatch", str(exc), archive)
    except OSError as exc:
        return ArchiveStatus(key, "unreadable", f"{archive.path}: cannot be read ({exc})", archive)
    state = "unverified" if checksum.startswith("unverified") else "verified"
    where = archive.path if archive.is_zip else archive.path / entry["top"]
    return ArchiveStatus(key, state, f"{where}: {'sha256 ' + checksum if state == 'verified' else checksum}", archive, checksum)


def describe_status(statuses: list[ArchiveStatus]) -> str:
    """One dataset's data in a few words: "real, verified", "real, unverified (...)", "NOT REAL: <archive> <why>" or synthetic."""
    if all(s.state == "no data directory" for s in statuses):
        return "synthetic (no data directory given)"
    broken = [s for s in statuses if not s.usable]
    if broken:
        return "NOT REAL: " + "; ".join(f"{s.key} {s.state}" for s in broken)
    return "real, " + " + ".join(sorted({"verified" if s.state == "verified" else s.checksum.split(";")[0] for s in statuses}))


def unusable(name: str, status: ArchiveStatus, data_dir) -> DataError:
    """The error for a dataset whose archive ``status`` is not usable: the folder, the archive expected, what is wrong."""
    error = ChecksumError if status.state == "checksum mismatch" else DataError
    return error(f"dataset {name!r} needs {manifest()[status.key]['archive']} in {data_dir}: {status.state}. {status.detail}")


def dataset_status(name: str, data_dir: str | os.PathLike | None = None, fresh: bool = False) -> list[ArchiveStatus]:
    """The status of every archive a registered dataset reads (two for a composed one)."""
    return [archive_status(key, data_dir, fresh) for key in get_spec(name).archive_keys]


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
    statuses = dataset_status(name, root, fresh=True)  # its checksum goes into provenance: from the bytes
    for status in statuses:
        if not status.usable:
            raise unusable(name, status, root)
    own, *extra = statuses
    kwargs = {"extra": {s.key: (s.archive, s.checksum) for s in extra}} if extra else {}
    return spec.index_real(archive=own.archive, split=split, checksum=own.checksum, meta=manifest()[own.key], seed=seed, **kwargs)


def available_real(data_dir: str | os.PathLike | None = None) -> dict[str, bool]:
    """Which registered datasets have every archive they read, usable, in the data directory.

    An archive that is missing counts as not available. One that is there but
    truncated, unreadable or fails its checksum is a DataError: a broken
    archive must never quietly turn into synthetic data.
    """
    root = resolve_data_dir(data_dir)
    if root is not None:
        check_holds_archives(root)
    found = {}
    for name in list_datasets():
        statuses = dataset_status(name, root)
        broken = [s for s in statuses if s.found and not s.usable]
        if broken:
            raise unusable(name, broken[0], root)
        found[name] = all(s.usable for s in statuses)
    return found


def archives_found(data_dir: str | os.PathLike) -> list[str]:
    """Manifest keys of the archives (ZIP or extracted folder) present in ``data_dir``, whatever their state."""
    return [key for key, entry in manifest().items() if Archive.present(Path(data_dir), entry["archive"], entry["top"])]


def check_holds_archives(data_dir: str | os.PathLike) -> None:
    """A data directory that holds none of the manifest's archives is a mistake (the wrong folder), never synthetic data."""
    if not archives_found(data_dir):
        names = ", ".join(entry["archive"] for entry in manifest().values())
        raise DataError(f"data directory {data_dir} holds none of the archives medad reads ({names}, or their extracted "
                        "folders); point it at the folder holding them, or give no data directory to run on synthetic data")
