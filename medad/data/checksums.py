"""SHA-256 verification of archives, computed once and remembered.

The verdict is cached under :func:`medad.runtime.cache_dir` keyed by the
file's absolute path, size and modification time, so a 170 MB archive is
hashed once, not at every chapter.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from medad.errors import ChecksumError
from medad.runtime import cache_dir

_CACHE_NAME = "sha256-verdicts.json"


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _load_cache() -> dict:
    try:
        return json.loads((cache_dir() / _CACHE_NAME).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def cached_sha256(path: Path) -> str:
    """The file's SHA-256, from the cache when the file has not changed since it was hashed."""
    path = Path(path)
    cache = _load_cache()
    key = _key(path)
    if key not in cache:
        cache[key] = sha256_of(path)
        tmp = cache_dir() / (_CACHE_NAME + ".tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(cache_dir() / _CACHE_NAME)
    return cache[key]


def verify_archive(path: Path, expected: str | None) -> str:
    """Return the archive's SHA-256; raise ChecksumError when it differs from ``expected``."""
    actual = cached_sha256(path)
    if expected and actual != expected:
        raise ChecksumError(
            f"{path}: SHA-256 is {actual}, expected {expected} (data/manifest.yml). "
            "The archive is corrupt, truncated or a different release: download it again."
        )
    return actual
