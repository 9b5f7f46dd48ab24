"""Finding weight files without waiting on a network that is not there.

open_clip and huggingface_hub retry a missing download for tens of seconds
before they give up. medad looks first: an explicit file, then the caches
those libraries would use, then ``$MEDAD_WEIGHTS``; only when nothing is found
and the hub answers a quick probe does it let them download. Offline, the
error comes at once and says where to put the file.
"""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from medad.errors import MedadError

HUB_HOST = "huggingface.co"


class WeightsNotFound(MedadError):
    """Pretrained weights were asked for but are neither on disk nor downloadable now."""


def offline_forced() -> bool:
    """True when the user said so: HF_HUB_OFFLINE / MEDAD_OFFLINE / TRANSFORMERS_OFFLINE set to 1/true/yes."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("MEDAD_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(host: str = HUB_HOST, timeout: float = 1.0) -> bool:
    """A TCP connection to ``host``:443 within ``timeout`` seconds (DNS included, run in a thread so it cannot hang)."""
    if offline_forced():
        return False
    result: list[bool] = []

    def probe():
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.2)
    return bool(result and result[0])


def weights_dirs() -> list[Path]:
    """Folders searched for weight files by name: $MEDAD_WEIGHTS (os.pathsep-separated), then torch hub's checkpoints."""
    dirs = [Path(p).expanduser() for p in os.environ.get("MEDAD_WEIGHTS", "").split(os.pathsep) if p]
    try:
        import torch

        dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    except Exception:  # torch hub dir unknown: just fewer places to look
        pass
    return dirs


def find_named_file(patterns: list[str]) -> Path | None:
    """The first file matching one of the glob ``patterns`` in :func:`weights_dirs`."""
    for d in weights_dirs():
        if not d.is_dir():
            continue
        for pat in patterns:
            hits = sorted(d.glob(pat))
            if hits:
                return hits[0]
    return None


def hf_cached_file(repo_id: str, filenames: list[str], cache_dir: str | None = None) -> Path | None:
    """A file of ``repo_id`` already in the Hugging Face cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in filenames:
        try:
            hit = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        except Exception:  # malformed repo id or cache: treat as not cached
            hit = None
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit)
    return None
