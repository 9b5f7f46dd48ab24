"""Small pieces shared by the ambiguous-segmentation models: input checks, grader choice, weight init."""
from __future__ import annotations

import torch
from torch import nn

from medad.errors import ConfigError


def check_images(images: torch.Tensor, in_channels: int) -> None:
    """Images are float (B, C, H, W) with H and W divisible by the network's total down-sampling."""
    if images.dim() != 4 or images.shape[1] != in_channels:
        raise ConfigError(f"images must be float (batch, {in_channels}, H, W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ConfigError(f"images must be a float tensor (scaled to [0, 1]), got {images.dtype}")


def check_grader_masks(grader_masks: torch.Tensor, images: torch.Tensor) -> None:
    if grader_masks.dim() != 4 or grader_masks.shape[0] != images.shape[0] or grader_masks.shape[2:] != images.shape[2:]:
        raise ConfigError(
            f"grader_masks must be bool (batch, graders, H, W) matching images {tuple(images.shape)}, got {tuple(grader_masks.shape)}"
        )


def check_size(images: torch.Tensor, levels: int) -> None:
    factor = 2 ** (levels - 1)
    if images.shape[-1] % factor or images.shape[-2] % factor:
        raise ConfigError(f"H and W must be divisible by {factor} for {levels} resolution levels, got {tuple(images.shape[-2:])}")


def random_grader(grader_masks: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One grader's mask per image, the grader drawn uniformly (the paper's training protocol): (B, H, W) long."""
    b, g = grader_masks.shape[:2]
    pick = torch.randint(g, (b,), generator=generator, device=grader_masks.device if generator is None else generator.device)
    pick = pick.to(grader_masks.device)
    return grader_masks[torch.arange(b, device=grader_masks.device), pick].long()


def pixel_ce_sum(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over pixels, per image: (B, C, H, W), (B, H, W) -> (B,).

    Summed, not averaged, over pixels like the official code, so that the data term keeps its
    weight against the KL term of the Probabilistic U-Net (a per-pixel mean would let KL dominate).
    """
    return nn.functional.cross_entropy(logits.float(), target, reduction="none").flatten(1).sum(1)


def init_conv_weights(module: nn.Module) -> None:
    """He-normal weights and near-zero biases for every convolution, as in the official code."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.trunc_normal_(m.bias, std=1e-3, a=-2e-3, b=2e-3)


def l2_penalty(module: nn.Module) -> torch.Tensor:
    """Half the sum of squared parameters (TF's l2_regularizer), to be scaled by the weight-decay factor."""
    return 0.5 * sum((p.float() ** 2).sum() for p in module.parameters())
