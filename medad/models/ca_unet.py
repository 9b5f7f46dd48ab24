"""CA-U-Net: a U-Net with CBAM attention and ASPP context (early-gastric-cancer chapter).

The paper (Biomedical Signal Processing and Control, 2023) adds two modules to a U-Net:

CBAM (Woo et al., ECCV 2018), channel attention then spatial attention on a feature map F::

    M_c(F) = sigmoid( MLP(AvgPool(F)) + MLP(MaxPool(F)) )        shared MLP C -> C/r -> C, ReLU
    F'     = M_c(F) * F
    M_s(F') = sigmoid( conv7x7([AvgPool_c(F'); MaxPool_c(F')]) )  pooling over channels
    F''    = M_s(F') * F'

ASPP (Chen et al., DeepLab): parallel convolutions with dilations 1, 2, 4, 6 on the coarsest
features, concatenated (MONAI's ``SimpleASPP``) and projected back by a 1x1 convolution.

The U-Net itself is built from MONAI blocks (``UnetBasicBlock``: two 3x3 conv + instance norm
+ leaky ReLU, stride 2 in the first conv of every level below the top; ``UnetUpBlock``:
transposed conv, concatenation with the skip, a basic block; ``UnetOutBlock``: 1x1 conv).
What is written here is only what the paper adds: CBAM and where it sits. The paper does not
say exactly where; we put one CBAM after every encoder level, so the refined features feed both
the skip connection and the next level, and ASPP at the bottleneck. Two output channels
(background, lesion) trained with pixel-wise cross-entropy, as the paper.

The ablation of the chapter switches the two modules: U-Net, +CBAM, +ASPP, CA-U-Net (both).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from medad.errors import ConfigError

VARIANTS = {"unet": (False, False), "unet+cbam": (True, False), "unet+aspp": (False, True), "ca-unet": (True, True)}


class ChannelAttention(nn.Module):
    """M_c: average- and max-pooled descriptors through one shared MLP, summed, sigmoid."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """M_s: channel-wise mean and max, concatenated, one 7x7 convolution, sigmoid."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """F'' = M_s(F') * F' with F' = M_c(F) * F."""

    def __init__(self, channels: int, reduction: int = 8, kernel_size: int = 7):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.channel(x) * x
        return self.spatial(x) * x


class ASPPBottleneck(nn.Module):
    """MONAI's SimpleASPP (1x1 and three dilated 3x3 convs) and a 1x1 projection back to ``channels``."""

    def __init__(self, channels: int, dilations: Sequence[int] = (1, 2, 4, 6)):
        super().__init__()
        from medad.compat.torchvision_ops import ensure_torchvision

        ensure_torchvision()
        from monai.networks.blocks import Convolution, SimpleASPP

        branch = max(1, channels // len(dilations))
        self.aspp = SimpleASPP(2, channels, branch, kernel_sizes=(1,) + (3,) * (len(dilations) - 1), dilations=tuple(dilations),
                               norm_type="INSTANCE", acti_type="LEAKYRELU")
        self.project = Convolution(2, branch * len(dilations), channels, kernel_size=1, norm="INSTANCE", act="LEAKYRELU")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.aspp(x))


class CAUNet(nn.Module):
    """U-Net on MONAI blocks with optional CBAM after each encoder level and ASPP at the bottleneck."""

    def __init__(self, in_channels: int = 3, channels: Sequence[int] = (16, 32, 64, 128), out_channels: int = 2,
                 cbam: bool = True, aspp: bool = True, reduction: int = 8):
        super().__init__()
        from medad.compat.torchvision_ops import ensure_torchvision

        ensure_torchvision()
        from monai.networks.blocks import UnetBasicBlock, UnetOutBlock, UnetUpBlock

        channels = tuple(int(c) for c in channels)
        if len(channels) < 2 or min(channels) < 1:
            raise ConfigError(f"channels must list at least two positive widths (one per level), got {channels!r}")
        self.channels, self.use_cbam, self.use_aspp = channels, bool(cbam), bool(aspp)
        self.down = nn.ModuleList()
        self.attn = nn.ModuleList()
        prev = in_channels
        for level, c in enumerate(channels):
            self.down.append(UnetBasicBlock(2, prev, c, kernel_size=3, stride=1 if level == 0 else 2, norm_name="instance"))
            self.attn.append(CBAM(c, reduction) if cbam else nn.Identity())
            prev = c
        self.bottleneck = ASPPBottleneck(channels[-1]) if aspp else nn.Identity()
        self.up = nn.ModuleList(
            UnetUpBlock(2, channels[i + 1], channels[i], kernel_size=3, stride=1, upsample_kernel_size=2, norm_name="instance")
            for i in reversed(range(len(channels) - 1))
        )
        self.out = UnetOutBlock(2, channels[0], out_channels)

    @property
    def divisor(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or not images.is_floating_point():
            raise ConfigError(f"images must be float (B, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if images.shape[-1] % self.divisor or images.shape[-2] % self.divisor:
            raise ConfigError(f"image height and width must be divisible by {self.divisor} "
                              f"({len(self.channels)} levels), got {tuple(images.shape[-2:])}")
        skips = []
        x = images
        for block, attn in zip(self.down, self.attn):
            x = attn(block(x))
            skips.append(x)
        x = self.bottleneck(x)
        for up, skip in zip(self.up, reversed(skips[:-1])):
            x = up(x, skip)
        return self.out(x)


def build_segmenter(variant: str = "ca-unet", channels: Sequence[int] = (16, 32, 64, 128), seed: int = 0) -> CAUNet:
    """One of the ablation's four networks (VARIANTS), seeded."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown segmentation variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    cbam, aspp = VARIANTS[variant]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CAUNet(channels=channels, cbam=cbam, aspp=aspp)
