"""The U-Net used by the Probabilistic U-Net paper (Kohl et al., NeurIPS 2018) and by its baselines.

Architecture as in the official code (SimonKohl/probabilistic_unet, model/probabilistic_unet.py):

- encoder: one block per entry of ``channels`` (LIDC: 32, 64, 128, 192). Block 0 works at full
  resolution; every later block first halves the resolution with 2x2 average pooling. Each
  block is ``convs_per_block`` (3) x [3x3 convolution, ReLU].
- decoder: for every scale but the coarsest, bilinear up-sampling (align_corners=True) of the
  coarser features to that scale, concatenation with the encoder's features there, then
  ``convs_per_block`` x [3x3 convolution, ReLU] with that scale's channel count.
- output: the last decoder feature map, ``channels[0]`` channels at full resolution. The
  Probabilistic U-Net combines it with a latent sample (f_comb); the plain baselines put a
  1x1 convolution on it (:class:`SegmentationUNet`).

``dropout`` > 0 adds element-wise dropout at the input of the blocks at the scales listed
in ``dropout_levels`` (encoder and decoder): the Dropout U-Net baseline, sampled with
Monte-Carlo dropout (Kendall et al., 2017).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from medad.errors import ConfigError
from medad.models.segmentation_common import check_images, check_size, init_conv_weights


def conv_stack(in_channels: int, out_channels: int, n_convs: int, dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
    for i in range(n_convs):
        layers += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def check_channels(channels: Sequence[int], convs_per_block: int) -> tuple[int, ...]:
    channels = tuple(int(c) for c in channels)
    if len(channels) < 1 or min(channels) < 1:
        raise ConfigError(f"channels must be a non-empty list of positive integers, got {channels!r}")
    if convs_per_block < 1:
        raise ConfigError(f"convs_per_block must be >= 1, got {convs_per_block}")
    return channels


class Encoder(nn.Module):
    """VGG-style encoder: returns the feature map of every scale, finest first."""

    def __init__(self, in_channels: int, channels: Sequence[int], convs_per_block: int = 3,
                 dropout: float = 0.0, dropout_levels: Sequence[int] = ()):
        super().__init__()
        channels = check_channels(channels, convs_per_block)
        self.in_channels = in_channels
        self.blocks = nn.ModuleList()
        prev = in_channels
        for level, c in enumerate(channels):
            self.blocks.append(conv_stack(prev, c, convs_per_block, dropout if level in dropout_levels else 0.0))
            prev = c

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level, block in enumerate(self.blocks):
            if level > 0:
                x = F.avg_pool2d(x, 2)
            x = block(x)
            features.append(x)
        return features


class Decoder(nn.Module):
    """Up-sample, concatenate the skip connection, convolve; from the coarsest scale to the finest."""

    def __init__(self, channels: Sequence[int], convs_per_block: int = 3,
                 dropout: float = 0.0, dropout_levels: Sequence[int] = ()):
        super().__init__()
        channels = check_channels(channels, convs_per_block)
        self.blocks = nn.ModuleList()
        for level in range(len(channels) - 1):  # block `level` produces the features of scale `level`
            self.blocks.append(conv_stack(channels[level + 1] + channels[level], channels[level], convs_per_block,
                                          dropout if level in dropout_levels else 0.0))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for level in range(len(features) - 2, -1, -1):
            skip = features[level]
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            x = self.blocks[level](torch.cat([x, skip], dim=1))
        return x


class UNet(nn.Module):
    """Encoder + decoder; ``forward`` returns the last decoder features, (B, channels[0], H, W)."""

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (32, 64, 128, 192), convs_per_block: int = 3,
                 dropout: float = 0.0, dropout_levels: Sequence[int] = ()):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self.channels = check_channels(channels, convs_per_block)
        self.in_channels = in_channels
        self.encoder = Encoder(in_channels, self.channels, convs_per_block, dropout, dropout_levels)
        self.decoder = Decoder(self.channels, convs_per_block, dropout, dropout_levels)
        init_conv_weights(self)

    @property
    def out_channels(self) -> int:
        return self.channels[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, self.in_channels)
        check_size(x, len(self.channels))
        return self.decoder(self.encoder(x))


class SegmentationUNet(nn.Module):
    """A U-Net with a 1x1 convolution to ``num_classes`` logits (the deterministic baseline's network)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, channels: Sequence[int] = (32, 64, 128, 192),
                 convs_per_block: int = 3, dropout: float = 0.0, dropout_levels: Sequence[int] = (), heads: int = 1):
        super().__init__()
        if num_classes < 2 or heads < 1:
            raise ConfigError(f"need num_classes >= 2 and heads >= 1, got {num_classes}, {heads}")
        self.unet = UNet(in_channels, channels, convs_per_block, dropout, dropout_levels)
        self.num_classes, self.heads = num_classes, heads
        self.head = nn.Conv2d(self.unet.out_channels, num_classes * heads, 1)
        init_conv_weights(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, H, W), or (B, heads, num_classes, H, W) when heads > 1."""
        logits = self.head(self.unet(x))
        if self.heads == 1:
            return logits
        return logits.unflatten(1, (self.heads, self.num_classes))
