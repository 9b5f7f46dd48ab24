"""The fast path of every training loop: bfloat16 autocast and channels-last memory, on CPU and CUDA alike.

``precision`` is ``fp32`` (plain float32) or ``bf16`` (``torch.autocast`` with bfloat16: matrix
products and convolutions run in bfloat16, while reductions, softmax, losses and everything the
model casts back with ``.float()`` stay float32). ``channels_last`` stores 4-D activations as
NHWC, which oneDNN (CPU) and cuDNN (GPU) run faster for convolutions. On a CPU with AVX-512 BF16
the two together train convolutional networks about twice as fast as float32
(``benchmarks/fast_path.py`` measures it side by side).

Evaluation (metrics, GED, AUC) is always computed on float32 outputs: callers cast what leaves
the model with ``.float()`` before scoring. On the CPU a run is deterministic per precision: the
same seed and settings give identical results twice, but bf16 and fp32 results differ.
"""
from __future__ import annotations

import contextlib

import torch

from medad.errors import ConfigError

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def device_type(device) -> str:
    return torch.device(device).type


def autocast(device, precision: str):
    """The context a training step runs its forward pass (and loss) in."""
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    kind = device_type(device)
    if kind not in ("cpu", "cuda"):
        raise ConfigError(f"precision 'bf16' runs on cpu or cuda, not {device!r}; use precision 'fp32'")
    return torch.autocast(kind, dtype=torch.bfloat16)


def memory_format(model: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    """The model with its 4-D weights in channels-last order (a no-op when ``channels_last`` is False)."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def as_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A batch of images (B, C, H, W) in the memory order the model expects."""
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def describe(precision: str, channels_last: bool) -> str:
    """How the book names a run's arithmetic: 'bf16 autocast, channels-last' or 'float32'."""
    text = "bf16 autocast" if precision == "bf16" else "float32"
    return text + (", channels-last" if channels_last else "")
