"""The official training schedule's arithmetic: Dassl's learning rate per epoch and its number of steps.

ViP (xiaofang007/ViP) and CoOp train with Dassl (KaiyangZhou/Dassl.pytorch). Its
``dassl/optim/lr_scheduler.py`` ``build_lr_scheduler`` makes
``CosineAnnealingLR(optimizer, float(max_epoch))`` and, with ``WARMUP_EPOCH > 0``
and ``WARMUP_TYPE "constant"``, wraps it in ``ConstantWarmupScheduler``; the
trainers call ``update_lr()`` (one scheduler step) after the last batch of every
epoch. With ``OPTIM.WARMUP_RECOUNT = True`` (Dassl's default) the wrapped cosine
keeps its own epoch count, which only starts to advance once the warm-up is over:

    lr(e) = warmup_lr                                          for e < W
    lr(e) = lr / 2 * (1 + cos(pi * (e - W) / epochs))          for e >= W

(epochs counted from 0; the cosine's period is all ``epochs``, not
``epochs - W``, so the last epoch does not reach 0). Dassl's training loader is
built with ``drop_last=is_train`` (``dassl/data/data_manager.py``,
``build_data_loader``): a last batch smaller than the batch size is dropped.
"""
from __future__ import annotations

import math

import torch

from medad.errors import ConfigError


def _positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def dassl_warmup_cosine(epoch: int, lr: float, epochs: int, warmup_epochs: int = 1, warmup_lr: float = 1e-5) -> float:
    """The learning rate of epoch ``epoch`` (0-based) under Dassl's constant warm-up + cosine (module docstring).

    warmup_epochs = 0 is Dassl's plain cosine (no wrapper): lr / 2 * (1 + cos(pi * e / epochs)).
    """
    _positive_int(epochs, "epochs")
    _positive_int(warmup_epochs, "warmup_epochs", 0)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < epochs:
        raise ConfigError(f"epoch must be an integer in 0..{epochs - 1}, got {epoch!r}")
    if not lr > 0 or not warmup_lr > 0:
        raise ConfigError(f"lr and warmup_lr must be > 0, got lr={lr!r}, warmup_lr={warmup_lr!r}")
    if epoch < warmup_epochs:
        return float(warmup_lr)
    return 0.5 * lr * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))


def steps_per_epoch(n: int, batch: int, drop_last: bool = True) -> int:
    """Optimiser steps in one pass over ``n`` training images with batches of ``batch``.

    drop_last=True is Dassl's training loader: the last partial batch is skipped. Fewer images than one
    batch would leave no step at all (and Dassl's schedule would never advance): a ConfigError.
    """
    _positive_int(n, "n (training images)")
    _positive_int(batch, "batch_size")
    if drop_last:
        if n < batch:
            raise ConfigError(f"batch_size={batch} exceeds the {n} training images: with the last partial batch "
                              f"dropped (as Dassl does) an epoch would have no step; lower batch_size")
        return n // batch
    return math.ceil(n / batch)


def epoch_batches(order: torch.Tensor, batch: int, drop_last: bool = True) -> list[torch.Tensor]:
    """The batches of one epoch: consecutive slices of the shuffled ``order``, the last partial one dropped or kept."""
    steps = steps_per_epoch(len(order), batch, drop_last)
    return [order[i * batch:(i + 1) * batch] for i in range(steps)]
