"""Attention-guided classifier (GAIN) of the early-gastric-cancer chapter.

Li et al., "Tell Me Where to Look: Guided Attention Inference Network", CVPR 2018, as used by
"Deep learning for classification and localization of early gastric cancer in endoscopic images"
(Biomedical Signal Processing and Control, 2023): GAIN-ResNet-50, the feature map before the
classifier as attention map, loss 0.9 x cross-entropy + 0.1 x MSE(attention map, lesion mask).

Notation: ``F`` in R^{K x h x w} is the last convolutional feature map, the head is global
average pooling then a linear layer, ``y_c = sum_k w_{c,k} GAP(F_k) + b_c``.

Attention map (Grad-CAM, Selvaraju et al. ICCV 2017, as GAIN does)::

    alpha_k^c = 1/(h w) sum_ij dy_c / dF_k(i, j)  =  w_{c,k} / (h w)       (exact for a GAP + linear head)
    A^c       = ReLU( sum_k alpha_k^c F_k )                                 (h x w)
    Â^c       = (up(A^c) - min up(A^c)) / (max up(A^c) - min up(A^c) + eps)   (H x W, in [0, 1])

so it is computed in closed form, differentiable in both ``F`` and ``w`` (GAIN back-propagates
through it), without a second backward pass. ``up`` is bilinear up-sampling to the image size.

Losses, with P the lesion images (label 1) that have a mask M (normal images get no mask term)::

    L_cls = CE(y, label)                                                   (mean over the batch)
    L_att = 1/|P| sum_{n in P} mean_pixels (Â^1_n - M_n)^2                 (the paper's MSE term)
    L_am  = 1/|P| sum_{n in P} softmax(f(I*_n))_1,
            I* = I - T(Â^1) * I,  T(Â) = sigmoid(omega (Â - sigma))        (GAIN's attention mining;
                                                                             our defaults omega = 10, sigma = 0.5)
    L     = 0.9 L_cls + 0.1 L_att + lambda_am L_am                          (lambda_am = 0: the paper)

The plain classifier of the baselines is the same network with the attention weight 0.
Backbones: EfficientNet-Lite0/2 with their packaged ImageNet weights; torchvision ResNet-50 /
VGG-16 with ImageNet weights only from a user-supplied file (otherwise random init, and then
``weights_label`` says so).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from medad.errors import ConfigError, DataError

# Architectures a classifier can be built on (medad.backbones names); the first two come with ImageNet weights.
ARCHITECTURES = ("effnet-lite0", "effnet-lite2", "resnet50", "vgg16")
PACKAGED = ("effnet-lite0", "effnet-lite2")
# Classifier methods (build_classifier's ``method``) and how tables name them.
METHODS = {"gain": "GAIN", "plain": "plain classifier", "gain-am": "GAIN + attention mining"}
LESION = 1


@dataclass
class GainWeights:
    """Loss weights: the paper's 0.9 / 0.1, attention mining off."""

    cls: float = 0.9
    attention: float = 0.1
    mining: float = 0.0
    omega: float = 10.0
    sigma: float = 0.5

    def __post_init__(self):
        for name in ("cls", "attention", "mining"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loss weight {name!r} must be >= 0, got {getattr(self, name)}")
        if self.cls <= 0:
            raise ConfigError(f"the classification weight must be > 0, got {self.cls}")


class AttentionClassifier(nn.Module):
    """A CNN backbone's stages, global average pooling and a linear layer; ``attention`` gives Â^c."""

    def __init__(self, arch: str = "effnet-lite0", pretrained: bool | str | os.PathLike = True, num_classes: int = 2,
                 image_size: int = 128, seed: int = 0, weights: GainWeights | None = None, frozen_stages: int = 0):
        super().__init__()
        import warnings

        from medad.backbones import load_backbone
        from medad.backbones.base import BackboneWarning

        if arch not in ARCHITECTURES:
            raise ConfigError(f"unknown architecture {arch!r} for the GAIN classifier; choose one of {', '.join(ARCHITECTURES)}")
        if isinstance(pretrained, (str, os.PathLike)) and not os.path.isfile(os.path.expanduser(os.fspath(pretrained))):
            raise ConfigError(f"weights file {os.fspath(pretrained)!r} for {arch!r} does not exist; "
                              f"pass the path of a torchvision {arch} state dict, or pretrained=False for random init")
        if isinstance(pretrained, (str, os.PathLike)) and arch.startswith("effnet"):
            raise ConfigError(f"{arch} takes its packaged ImageNet weights (pretrained=True) or none (False), not a file")
        with warnings.catch_warnings():  # random init is recorded in weights_label instead of warned about
            warnings.simplefilter("ignore", BackboneWarning)
            backbone = load_backbone(arch, pretrained=pretrained, seed=seed, freeze=False, image_size=image_size)
        self.arch, self.image_size, self.num_classes = arch, int(image_size), int(num_classes)
        self.pretrained = bool(backbone.pretrained)
        self.weights_source = backbone.weights_source
        self.body = backbone.model
        # views of self.body's modules, kept out of the module tree so each weight is saved once
        self.__dict__["_stem"], self.__dict__["_stages"] = backbone.stem, tuple(backbone.stages)
        self.register_buffer("mean", backbone._preprocess.mean.view(1, 3, 1, 1).clone())
        self.register_buffer("std", backbone._preprocess.std.view(1, 3, 1, 1).clone())
        self.feature_channels = backbone.stage_widths[-1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.fc = nn.Linear(self.feature_channels, self.num_classes)
        self.weights = weights or GainWeights()
        if not 0 <= frozen_stages < len(self._stages):
            raise ConfigError(f"frozen_stages must be in 0..{len(self._stages) - 1} for {arch}, got {frozen_stages}")
        self.frozen_stages = int(frozen_stages)
        frozen = [self._stem, *self._stages[:frozen_stages]] if frozen_stages else []
        for module in frozen:  # CPU budget: the first stages keep their ImageNet weights and statistics
            module.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_stages:
            for module in (self._stem, *self._stages[: self.frozen_stages]):
                module.train(False)
        return self

    @property
    def weights_label(self) -> str:
        """How tables name the initialisation: 'ImageNet' or 'random-init'."""
        return "ImageNet" if self.pretrained else "random-init"

    @property
    def feature_layer(self) -> nn.Module:
        """The module whose output is F (the target layer of Grad-CAM)."""
        return self._stages[-1]

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """Float images (B, 3, H, W) in [0, 1] -> the output of the stem and the frozen stages.

        With ``frozen_stages`` > 0 this part never changes, so an experiment can compute it once
        per image and train on it (``features_from_trunk``) at a fraction of the cost.
        """
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ConfigError(f"images must be float (B, 3, H, W) in [0, 1], got {images.dtype} {tuple(images.shape)}")
        x = self._stem((images - self.mean) / self.std)
        for stage in self._stages[: self.frozen_stages]:
            x = stage(x)
        return x

    def features_from_trunk(self, z: torch.Tensor) -> torch.Tensor:
        for stage in self._stages[self.frozen_stages:]:
            z = stage(z)
        return z

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Float images (B, 3, H, W) in [0, 1] -> the last convolutional feature map F (B, K, h, w)."""
        return self.features_from_trunk(self.trunk(images))

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(feats.mean(dim=(2, 3)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def attention_from(self, feats: torch.Tensor, size: tuple[int, int], cls: int = LESION) -> torch.Tensor:
        """Â^cls (B, H, W) in [0, 1] from features F: Grad-CAM weights w_cls / (h w), ReLU, up-sample, min-max scale."""
        h, w = feats.shape[-2:]
        cam = F.relu(torch.einsum("bkij,k->bij", feats, self.fc.weight[cls]) / (h * w))
        cam = F.interpolate(cam.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
        low = cam.flatten(1).amin(1).view(-1, 1, 1)
        return (cam - low) / (cam.flatten(1).amax(1).view(-1, 1, 1) - low + 1e-7)  # as Grad-CAM's scale_cam_image

    def attention(self, images: torch.Tensor, cls: int = LESION) -> torch.Tensor:
        return self.attention_from(self.features(images), tuple(images.shape[-2:]), cls)

    def loss(self, labels: torch.Tensor, masks: torch.Tensor, images: torch.Tensor | None = None,
             trunk: torch.Tensor | None = None, has_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The terms of L (module docstring) for a batch of ``images`` or of precomputed ``trunk`` outputs.

        masks: (B, H, W) bool at the image size, all-false for normal images. Attention mining
        needs the images themselves (it classifies the masked image again); pass both ``trunk``
        (the cached output of ``.trunk(images)``, used for the main forward pass) and ``images``
        to train with mining at the cost of one extra pass through the whole network for the
        lesion images only.
        """
        if images is None and trunk is None:
            raise ConfigError("pass images (B, 3, H, W) or trunk (the output of .trunk), or both for attention mining")
        if images is not None and trunk is not None and images.shape[0] != trunk.shape[0]:
            raise ConfigError(f"images ({images.shape[0]}) and trunk outputs ({trunk.shape[0]}) must be the same batch")
        batch = (images if images is not None else trunk).shape[0]
        if masks.ndim != 3 or masks.shape[0] != batch or (images is not None and masks.shape[-2:] != images.shape[-2:]):
            shape = tuple(images.shape) if images is not None else f"{batch} images"
            raise DataError(f"masks {tuple(masks.shape)} do not match images {shape}: "
                            f"expected one (H, W) mask per image, of the image's size")
        wts = self.weights
        if wts.mining > 0 and images is None:
            raise ConfigError("attention mining (weight > 0) needs the images too, not only precomputed trunk features")
        feats = self.features_from_trunk(trunk) if trunk is not None else self.features(images)
        logits = self.head(feats)
        ce = F.cross_entropy(logits, labels)
        out = {"ce": ce}
        total = wts.cls * ce
        lesion = labels == LESION
        if has_mask is not None:
            lesion = lesion & has_mask.bool()
        zero = logits.new_zeros(())
        if (wts.attention > 0 or wts.mining > 0) and bool(lesion.any()):
            att = self.attention_from(feats[lesion], tuple(masks.shape[-2:]))
            mse = ((att - masks[lesion].float()) ** 2).mean()
            total = total + wts.attention * mse
            out["attention"] = mse
            if wts.mining > 0:
                soft = torch.sigmoid(wts.omega * (att - wts.sigma)).unsqueeze(1)
                mined = images[lesion] * (1 - soft)
                am = torch.softmax(self(mined), dim=1)[:, LESION].mean()
                total = total + wts.mining * am
                out["mining"] = am
        out.setdefault("attention", zero)
        if wts.mining > 0:
            out.setdefault("mining", zero)
        out["loss"] = total
        return out


def build_classifier(arch: str = "effnet-lite0", method: str = "gain", pretrained=True, image_size: int = 128,
                     seed: int = 0, mining: float = 0.0, frozen_stages: int = 0) -> AttentionClassifier:
    """``method``: 'gain' (0.9 CE + 0.1 MSE), 'gain-am' (plus attention mining), 'plain' (CE only)."""
    if method == "plain":
        weights = GainWeights(cls=1.0, attention=0.0)
    elif method == "gain":
        weights = GainWeights(mining=mining)
    elif method == "gain-am":
        weights = GainWeights(mining=mining or 1.0)
    else:
        raise ConfigError(f"unknown classifier method {method!r}; choose one of {', '.join(METHODS)}")
    return AttentionClassifier(arch, pretrained=pretrained, image_size=image_size, seed=seed, weights=weights,
                               frozen_stages=frozen_stages)
