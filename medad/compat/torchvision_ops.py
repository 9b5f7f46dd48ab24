"""Make ``import torchvision`` work when its compiled operators cannot load.

Why this exists: PyPI's torchvision wheels are linked against CUDA. On a
machine with the CPU-only build of torch, torchvision's ``_C`` extension
fails to load, and ``import torchvision`` then dies in
``torchvision/_meta_registrations.py`` with::

    RuntimeError: operator torchvision::nms does not exist

because that module registers fake kernels for ``torchvision::nms`` and
``torchvision::qnms``, which only the compiled extension defines. open_clip
and timm import torchvision at start-up, so without a fix neither imports.

What it does: :func:`ensure_torchvision` first asks whether torchvision's
compiled extension loads. If it does, nothing is changed. If not, it defines
the two operator schemas that the import needs, with a pure-torch CPU
``nms`` so the operator is correct if someone calls it, and then imports
torchvision. Every other compiled op (roi_align, deform_conv2d, ...) keeps
torchvision's own "Couldn't load custom C++ ops" error; medad uses none.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

_state: dict[str, str] = {}


def _extension_path() -> Path | None:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(folder.glob("_C*.so")) + sorted(folder.glob("_C*.pyd"))
    return found[0] if found else None


def compiled_ops_load() -> bool:
    """True when torchvision's own compiled operators load into this torch."""
    if "library" not in _state and _has_op("nms"):  # already loaded, and not by us
        return True
    path = _extension_path()
    if path is None:
        return False
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError, ImportError):
        return False
    return True


def _has_op(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def nms_reference(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression on (x1, y1, x2, y2) boxes, pure torch.

    Returns the indices of the kept boxes, highest score first, as torchvision does.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    order = scores.argsort(descending=True)
    keep = []
    suppressed = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas - inter).clamp(min=torch.finfo(boxes.dtype).tiny)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def _define_missing_ops() -> None:
    # Keep the Library objects alive: the definitions vanish when they are collected.
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", nms_reference, "CPU")
    _state["library"] = lib  # type: ignore[assignment]


def ensure_torchvision() -> str:
    """Import torchvision, patching the missing operators only when needed.

    Returns ``"native"`` when torchvision's compiled ops load (nothing was
    changed), ``"shim"`` when medad defined the missing operators, and
    ``"absent"`` when torchvision is not installed.
    """
    if "mode" in _state:
        return _state["mode"]
    if importlib.util.find_spec("torchvision") is None:
        _state["mode"] = "absent"
        return "absent"
    if compiled_ops_load():
        mode = "native"
    else:
        _define_missing_ops()
        mode = "shim"
    import torchvision  # noqa: F401  (the import itself is the point)

    _state["mode"] = mode
    return mode
