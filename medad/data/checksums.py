"""SHA-256 verification of archives, with a cache that never stands in for a verdict that matters.

Hashing all six shared archives takes under a second here, so the cache is a
convenience, not evidence:

- ``fresh=True`` (``data verify``, and ``open_dataset`` before a checksum goes
  into a run's provenance) hashes the file's bytes again, at most once per
  process for an unchanged file;
- otherwise (``data list``, the book's stamps) a verdict cached under
  :func:`medad.runtime.cache_dir` is reused when the file's path, size,
  modification time, inode and status-change time (ctime, which ``touch`` cannot
  set back) are all unchanged.

The cache is optional: a cache folder that cannot be created, read or written
(full disk, read-only, no permission) costs re-hashing and a
:class:`~medad.errors.CacheWarning` naming the folder and its fault, never a
verdict on the archive.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

from medad.data.atomic import write_atomic
from medad.errors import CacheWarning, ChecksumError

_CACHE_NAME = "sha256-verdicts.json"
_HASHED_HERE: dict[str, str] = {}  # file key -> SHA-256 this process computed from the bytes


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_ctime_ns}"


def _cache_folder() -> Path:
    from medad.runtime import cache_dir

    return cache_dir()  # creates it: may raise OSError


def _cache_fault(action: str, folder, exc: OSError) -> None:
    why = exc.strerror or type(exc).__name__
    warnings.warn(CacheWarning(
        f"checksum cache folder {folder}: cannot {action} ({why}); checksums are computed but not remembered. "
        "Free space or fix its permissions, or set MEDAD_CACHE to a writable folder"), stacklevel=3)


def _load_cache() -> dict:
    folder = None
    try:
        folder = _cache_folder()
        return json.loads((folder / _CACHE_NAME).read_text())
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}  # a damaged cache is rebuilt
    except OSError as exc:
        _cache_fault("be read" if folder else "be created", folder or _describe_cache_folder(), exc)
        return {}


def _describe_cache_folder() -> str:
    return os.environ.get("MEDAD_CACHE") or "~/.cache/medad (or $XDG_CACHE_HOME/medad)"


def _remember(key: str, digest: str) -> None:
    folder = None
    try:
        folder = _cache_folder()
        cache = _load_cache()
        cache[key] = digest
        write_atomic(folder / _CACHE_NAME, json.dumps(cache, indent=1))
    except OSError as exc:
        _cache_fault("be written" if folder else "be created", folder or _describe_cache_folder(), exc)


def cached_sha256(path: Path, fresh: bool = False) -> str:
    """The file's SHA-256. ``fresh``: from its bytes (once per process); else from the cache when the file is unchanged."""
    path = Path(path)
    key = _key(path)
    cache = _load_cache()
    if not fresh and cache.get(key):
        return cache[key]
    digest = _HASHED_HERE.get(key) or sha256_of(path)  # an OSError here is about the archive itself
    _HASHED_HERE[key] = digest
    if cache.get(key) != digest:
        _remember(key, digest)
    return digest


def verify_archive(path: Path, expected: str | None, fresh: bool = False) -> str:
    """Return the archive's SHA-256; raise ChecksumError when it differs from ``expected``."""
    actual = cached_sha256(path, fresh=fresh)
    if expected and actual != expected:
        raise ChecksumError(
            f"{path}: SHA-256 is {actual}, expected {expected} (data/manifest.yml). "
            "The archive is corrupt, truncated or a different release: download it again."
        )
    return actual
