"""The baselines the Probabilistic U-Net paper compares with (Kohl et al., NeurIPS 2018, Sec. 4).

All share the interface of :class:`medad.models.prob_unet.ProbUNet`:
``loss(images, grader_masks, generator) -> dict(loss=...)`` trains on a randomly chosen
grader's mask per image, ``sample(images, n, generator) -> bool (B, n, H, W)``.

- :class:`DeterministicUNet` — one segmentation per image; its "samples" are n copies.
- :class:`DropoutUNet` — dropout at the deeper scales, kept on at test time (MC dropout,
  Kendall et al., 2017); each sample is one stochastic forward pass. The dropout rate and
  placement are this project's choice (``dropout``, ``dropout_levels``).
- :class:`UNetEnsemble` — K U-Nets from different initialisations, each shown its own random
  grader per image (Lakshminarayanan et al., 2017); sample i comes from member i mod K.
- :class:`MHeadsUNet` — one U-Net trunk with M output heads trained with the best-of-M
  ("oracle set") loss of Rupprecht et al. (ICCV 2017): per image only the head with the lowest
  cross-entropy gets the gradient. A relaxed version (``relax`` = eps, winner weight 1 - eps,
  the others eps / (M - 1)) avoids heads that never win; eps = 0 is the pure best-of-M.
  Sample i comes from head i mod M.

Ensemble members and heads are enumerated in order, so N samples of an ensemble of K cover every
member N / K times when K divides N: GED then measures the ensemble's own (uniform) distribution.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from medad.errors import ConfigError
from medad.models.segmentation_common import check_grader_masks, pixel_ce_sum, random_grader
from medad.models.unet import SegmentationUNet


def _check_n(n: int) -> None:
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")


class DeterministicUNet(nn.Module):
    """Plain U-Net trained with cross-entropy on a random grader's mask."""

    kind = "unet"

    def __init__(self, in_channels: int = 1, num_classes: int = 2, channels: Sequence[int] = (32, 64, 128, 192),
                 convs_per_block: int = 3, dropout: float = 0.0, dropout_levels: Sequence[int] = ()):
        super().__init__()
        self.net = SegmentationUNet(in_channels, num_classes, channels, convs_per_block, dropout, dropout_levels)

    def loss(self, images, grader_masks, generator=None) -> dict:
        check_grader_masks(grader_masks, images)
        ce = pixel_ce_sum(self.net(images), random_grader(grader_masks, generator)).mean()
        return {"loss": ce, "rec": ce.detach()}

    @torch.no_grad()
    def sample(self, images, n: int, generator=None) -> torch.Tensor:
        _check_n(n)
        seg = self.net(images).argmax(1) > 0
        return seg[:, None].expand(-1, n, -1, -1).clone()


class DropoutUNet(DeterministicUNet):
    """U-Net with dropout; ``sample`` keeps dropout active (Monte-Carlo dropout)."""

    kind = "dropout_unet"

    def __init__(self, in_channels: int = 1, num_classes: int = 2, channels: Sequence[int] = (32, 64, 128, 192),
                 convs_per_block: int = 3, dropout: float = 0.5, dropout_levels: Sequence[int] | None = None):
        if not 0 < dropout < 1:
            raise ConfigError(f"the Dropout U-Net needs 0 < dropout < 1, got {dropout}")
        if dropout_levels is None:  # every scale but the finest
            dropout_levels = tuple(range(1, len(channels)))
        super().__init__(in_channels, num_classes, channels, convs_per_block, dropout, tuple(dropout_levels))

    @torch.no_grad()
    def sample(self, images, n: int, generator=None) -> torch.Tensor:
        # torch's dropout draws from the global generator, so `generator` cannot steer it;
        # the training loop seeds and checkpoints the global state instead.
        _check_n(n)
        was_training = self.training
        self.train()  # dropout on; the network has no batch-norm, so nothing else changes
        try:
            return torch.stack([self.net(images).argmax(1) > 0 for _ in range(n)], dim=1)
        finally:
            self.train(was_training)


class UNetEnsemble(nn.Module):
    """K independently initialised U-Nets trained side by side (each on its own random grader draws)."""

    kind = "unet_ensemble"

    def __init__(self, in_channels: int = 1, num_classes: int = 2, channels: Sequence[int] = (32, 64, 128, 192),
                 convs_per_block: int = 3, members: int = 4):
        super().__init__()
        if members < 1:
            raise ConfigError(f"an ensemble needs members >= 1, got {members}")
        self.members = nn.ModuleList(SegmentationUNet(in_channels, num_classes, channels, convs_per_block) for _ in range(members))

    def loss(self, images, grader_masks, generator=None) -> dict:
        check_grader_masks(grader_masks, images)
        # the sum trains every member exactly as if alone (disjoint parameters)
        ces = [pixel_ce_sum(m(images), random_grader(grader_masks, generator)).mean() for m in self.members]
        total = torch.stack(ces).sum()
        return {"loss": total, "rec": (total / len(ces)).detach()}

    @torch.no_grad()
    def sample(self, images, n: int, generator=None) -> torch.Tensor:
        _check_n(n)
        segs = [m(images).argmax(1) > 0 for m in self.members[: min(n, len(self.members))]]
        return torch.stack([segs[i % len(segs)] for i in range(n)], dim=1)


class MHeadsUNet(nn.Module):
    """One U-Net trunk, M 1x1-convolution heads, best-of-M loss (relaxed by ``relax``)."""

    kind = "mheads"

    def __init__(self, in_channels: int = 1, num_classes: int = 2, channels: Sequence[int] = (32, 64, 128, 192),
                 convs_per_block: int = 3, heads: int = 4, relax: float = 0.05):
        super().__init__()
        if heads < 2:
            raise ConfigError(f"M-heads needs heads >= 2, got {heads}")
        if not 0 <= relax < 1:
            raise ConfigError(f"relax must be in [0, 1), got {relax}")
        self.net = SegmentationUNet(in_channels, num_classes, channels, convs_per_block, heads=heads)
        self.heads, self.relax = heads, relax

    def loss(self, images, grader_masks, generator=None) -> dict:
        check_grader_masks(grader_masks, images)
        logits = self.net(images)  # (B, M, C, H, W)
        target = random_grader(grader_masks, generator)
        ce = torch.stack([pixel_ce_sum(logits[:, h], target) for h in range(self.heads)], dim=1)  # (B, M)
        winner = nn.functional.one_hot(ce.detach().argmin(1), self.heads).float()
        weights = winner * (1 - self.relax) + (1 - winner) * (self.relax / (self.heads - 1))
        loss = (weights * ce).sum(1).mean()
        return {"loss": loss, "rec": ce.min(1).values.mean().detach()}

    @torch.no_grad()
    def sample(self, images, n: int, generator=None) -> torch.Tensor:
        _check_n(n)
        segs = self.net(images).argmax(2) > 0  # (B, M, H, W)
        return segs[:, [i % self.heads for i in range(n)]]
