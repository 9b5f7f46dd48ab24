"""Writing a file so that readers see the old or the new version, never half of one, and no temporary file stays.

Each writer gets its own temporary file (process id and a random token in its
name) next to the target, so two processes writing the same file never trade
temporary files; a write that fails (disk full, read-only folder, an exception
while producing the data) removes its temporary file before the error goes on.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator

TEMP_MARK = ".tmp"  # every temporary name holds it: ``.<stem>.<pid>-<token>.tmp<suffix>``


def temporary_name(path: Path) -> Path:
    """A temporary path beside ``path`` that no other writer uses; it keeps the suffix (``np.savez`` wants ``.npz``)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_MARK}{path.suffix}")


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on any failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through :func:`atomic_target`."""
    with atomic_target(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
