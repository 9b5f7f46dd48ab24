"""Seeds, devices and cache folders: the small facts every chapter needs."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np

from medad.errors import ConfigError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so CPU runs repeat exactly."""
    import torch

    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def resolve_device(device: str = "auto") -> str:
    """'auto' picks CUDA when present, else CPU; 'cuda' without a GPU is an error, not a silent fallback."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" or device.startswith("cuda") or device == "mps":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} was asked for, but torch sees no CUDA GPU on this machine; use device='cpu' or 'auto'")
        return device
    raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def device_description(device: str) -> str:
    """A human-readable name of the device, for provenance."""
    import platform

    import torch

    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__})"


def cache_dir() -> Path:
    """Where medad keeps verified checksums and decoded arrays: MEDAD_CACHE, else ~/.cache/medad."""
    root = os.environ.get("MEDAD_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "medad")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
