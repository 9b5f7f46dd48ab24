"""The torchvision compatibility module: a working import on CPU torch, and hands off where ops load."""
import pytest
import torch

from medad.compat import torchvision_ops as tv


def brute_force_nms(boxes, scores, thr):
    order = sorted(range(len(boxes)), key=lambda i: -float(scores[i]))
    keep = []
    for i in order:
        ok = True
        for j in keep:
            x1 = max(boxes[i][0], boxes[j][0]); y1 = max(boxes[i][1], boxes[j][1])
            x2 = min(boxes[i][2], boxes[j][2]); y2 = min(boxes[i][3], boxes[j][3])
            inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
            area = lambda b: (b[2] - b[0]) * (b[3] - b[1])
            if inter / (area(boxes[i]) + area(boxes[j]) - inter) > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def test_torchvision_imports_after_ensure():
    mode = tv.ensure_torchvision()
    assert mode in {"native", "shim"}
    import torchvision

    assert torchvision.__version__
    assert hasattr(torch.ops.torchvision, "nms")


def test_open_clip_and_timm_import():
    tv.ensure_torchvision()
    import open_clip
    import timm

    assert open_clip.list_models() and timm.list_models("resnet50")


def test_nms_operator_matches_brute_force():
    tv.ensure_torchvision()
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(40, 2, generator=g) * 50
    wh = torch.rand(40, 2, generator=g) * 20 + 1
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.rand(40, generator=g)
    expected = brute_force_nms(boxes.tolist(), scores.tolist(), 0.3)
    assert tv.nms_reference(boxes, scores, 0.3).tolist() == expected
    assert torch.ops.torchvision.nms(boxes, scores, 0.3).tolist() == expected
    assert tv.nms_reference(boxes[:0], scores[:0], 0.3).numel() == 0


def test_does_nothing_when_compiled_ops_load(monkeypatch):
    monkeypatch.setattr(tv, "_state", {})
    monkeypatch.setattr(tv, "compiled_ops_load", lambda: True)
    monkeypatch.setattr(tv, "_define_missing_ops", lambda: pytest.fail("patched although the compiled ops load"))
    assert tv.ensure_torchvision() == "native"


def test_reports_absent_torchvision(monkeypatch):
    monkeypatch.setattr(tv, "_state", {})
    monkeypatch.setattr(tv.importlib.util, "find_spec", lambda name: None)
    assert tv.ensure_torchvision() == "absent"


def test_mode_matches_whether_the_extension_loads():
    """In a fresh interpreter: 'shim' exactly when torchvision's compiled library fails to load."""
    import subprocess
    import sys

    code = (
        "from medad.compat import torchvision_ops as tv\n"
        "loads = tv.compiled_ops_load()\n"
        "mode = tv.ensure_torchvision()\n"
        "import torchvision\n"
        "print(loads, mode)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loads, mode = out.stdout.split()
    assert mode == ("native" if loads == "True" else "shim")
