"""MVFA computes what the official MVFA-AD code computes (issue 20, items 1-6), on small hand-checked tensors.

Each test names the official file it follows. Real CLIP weights do not exist here: the model-level tests run
MVFA on a tiny random open_clip ViT (2 x 2 patches, class token) and on a tiny CNN backbone (no class token).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from medad.backbones import BackboneWarning, load_backbone
from medad.backbones.base import OPENAI_MEAN, OPENAI_STD, Backbone, ImageFeatures, Preprocess, run_cnn_stages
from medad.errors import ConfigError
from medad.models import mvfa as M

EPS = 1e-5  # the label smoothing of official loss.py's FocalLoss


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _unit(angle: float) -> list[float]:
    return [math.cos(angle), math.sin(angle)]


def _angle_for_gap(gap: float) -> float:
    """The direction whose logits against text = eye(2) differ by ``gap``: 100 (sin a - cos a) = gap."""
    return math.pi / 4 + math.asin(gap / (100.0 * math.sqrt(2.0)))


TEXT = torch.eye(2, dtype=torch.float64)  # row 0 normal, row 1 abnormal: a token's logits are 100 x its two coordinates


# ---- tiny backbones ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vit():
    """A random open_clip ViT (3 blocks, 32 wide, 16 x 16 px in 8 px patches: 2 x 2 grid + class token)."""
    from medad.backbones.clip_openclip import OpenCLIPBackbone, _open_clip

    open_clip = _open_clip()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = open_clip.CLIP(embed_dim=16, quick_gelu=True,
                             vision_cfg=dict(layers=3, width=32, head_width=16, patch_size=8, image_size=16),
                             text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    net.eval()
    return OpenCLIPBackbone(net, name="tiny-vit", arch="ViT-B-16", image_size=16, levels=(1, 2, 3),
                            weights_source="random (test)", pretrained=False, description="test",
                            resize="squash").freeze()


class _TinyCNN(Backbone):
    """Two conv stages (8 x 8 -> 4 x 4 -> 2 x 2), 'text' of width 6: a CNN path without a class token."""

    has_text = True

    def __init__(self):
        super().__init__()
        self.name, self.embed_dim, self.image_size = "tiny-cnn", 6, 8
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.stages = nn.ModuleList([nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 5, 3, 2, 1)])
        self.stage_widths, self.default_levels = (4, 5), (1, 2)
        self._preprocess = Preprocess(8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "squash")

    def encode_image(self, images, levels=None, inserts=None):
        levels, inserts = self._resolve_levels_inserts(levels, inserts)
        x, taken = run_cnn_stages(images, self.stages, levels, inserts)
        return ImageFeatures(x.mean((2, 3)), [taken[s].flatten(2).transpose(1, 2) for s in levels],
                             [tuple(taken[s].shape[-2:]) for s in levels], levels, [None for _ in levels])


class _FixedTokens(nn.Module):
    """A 'model' whose seg and det tokens are given (one level), for scoring and loss tests."""

    def __init__(self, tokens: torch.Tensor, grid):
        super().__init__()
        self.tokens, self.grid = tokens, grid

    def forward(self, images):
        t = self.tokens[: len(images)]
        return M.AdaptedTokens([t], [t], [self.grid], (1,), torch.zeros(len(t), 1))


# ---- item 1: zero-shot map = softmax of the upsampled logits (test_zero.py, test_few.py) -----


def test_zero_shot_map_upsamples_the_logits_before_the_softmax():
    # a 1 x 2 grid: patch 0 has equal logits, patch 1 an abnormal lead of 4; bilinear to 3 x 3 (aligned corners)
    logits = torch.tensor([[[0.0, 0.0], [0.0, 4.0]]], dtype=torch.float64)
    got = M.zero_shot_map(logits, (1, 2), 3)
    # the middle column interpolates the logits (lead 2), then the softmax: sigmoid(2)
    hand = torch.tensor([0.5, _sigmoid(2.0), _sigmoid(4.0)], dtype=torch.float64)
    assert got.shape == (1, 3, 3)
    assert torch.allclose(got[0], hand.expand(3, 3), atol=1e-12)
    # the other order (softmax per patch, then interpolate) gives (0.5 + sigmoid(4)) / 2 = 0.741 in the middle
    other = M.upsample(logits.softmax(-1)[..., 1], (1, 2), 3)
    assert abs(float(other[0, 0, 1]) - (0.5 + _sigmoid(4.0)) / 2) < 1e-12
    assert float(got[0, 0, 1] - other[0, 0, 1]) > 0.13
    with pytest.raises(ConfigError, match="2x2"):
        M.zero_shot_map(logits, (2, 2), 3)


def test_branch_scores_use_that_order_and_the_det_score_is_the_mean_patch_probability():
    tokens = torch.tensor([[_unit(math.pi / 4), _unit(_angle_for_gap(4.0))]], dtype=torch.float64)
    scores = M.branch_scores(_FixedTokens(tokens, (1, 2)), torch.zeros(1, 3, 4, 4), TEXT, None, map_size=3)
    assert scores.seg_zero.shape == (1, 1, 3, 3)
    assert np.allclose(scores.seg_zero[0, 0, :, 1], _sigmoid(2.0), atol=1e-5)
    assert np.allclose(scores.det_zero[0, 0], (0.5 + _sigmoid(4.0)) / 2, atol=1e-5)
    assert np.isnan(scores.seg_few).all() and np.isnan(scores.det_few).all()  # no memory bank given


# ---- item 2: zero-shot image score on masked data = det branch (test_zero.py) ----------------


def _hand_scores() -> M.BranchScores:
    # 3 images, 2 levels, 2 x 2 maps; det says image 1 is the most abnormal, the map maxima say image 2
    det_zero = np.array([[0.2, 0.3], [0.9, 0.05], [0.1, 0.1]])
    seg_zero = np.zeros((3, 2, 2, 2))
    seg_zero[0, :, 0, 0] = [0.3, 0.3]
    seg_zero[1, :, 1, 1] = [0.2, 0.1]
    seg_zero[2, :, 0, 1] = [0.5, 0.4]
    seg_few = np.zeros((3, 2, 2, 2))
    seg_few[0, 0, 1, 0] = 1.0
    seg_few[1, 1, 0, 0] = 0.5
    return M.BranchScores(seg_zero, seg_few, det_zero, np.full((3, 2), np.nan))


def test_zero_shot_image_score_on_masked_data_is_the_sum_over_levels_of_the_det_branch():
    s = _hand_scores()
    zero = M.combine(s, None, pixel_level=True, branch="zero", normalisation="test")
    assert np.allclose(zero.image, [0.5, 0.95, 0.2])  # 0.2 + 0.3, 0.9 + 0.05, 0.1 + 0.1
    assert np.allclose(zero.maps, s.seg_zero.sum(1))  # the map itself is unchanged
    old = M.combine(s, None, pixel_level=True, branch="zero", normalisation="test", zero_shot_image="map_max")
    assert np.allclose(old.image, [0.6, 0.3, 0.9])  # the max of each level-summed map
    # few-shot on masked data keeps the official test_few.py rule: the max of the combined map
    both = M.combine(s, None, pixel_level=True, branch="both", normalisation="test")
    z, f = s.seg_zero.sum(1), s.seg_few.sum(1)  # test-set min-max: z in [0, 0.9], f in [0, 1]
    hand = 0.5 * z / 0.9 + 0.5 * f / 1.0
    assert np.allclose(both.image, hand.reshape(3, -1).max(1))
    # image 0: max(0.5 * 0.6 / 0.9 at (0, 0), 0.5 * 1 at (1, 0)); image 1: max(0.5 * 0.3 / 0.9, 0.5 * 0.5); image 2: 0.5 * 0.9 / 0.9
    assert np.allclose(both.image, [0.5, 0.25, 0.5])
    assert np.isnan(both.det_image).all()  # no det few-shot scores: the det image score is not made up
    with pytest.raises(ConfigError, match="zero_shot_image"):
        M.combine(s, None, True, branch="zero", normalisation="test", zero_shot_image="max")


# ---- item 3: focal and Dice terms of official loss.py ---------------------------------------------------------


def test_focal_loss_is_the_mean_over_pixels_of_the_official_term():
    p1 = torch.tensor([[[0.9, 0.2], [0.6, 0.1]]], dtype=torch.float64)  # abnormal probability, one 2 x 2 image
    probs = torch.stack([1 - p1, p1], 1)
    mask = torch.tensor([[[1, 0], [0, 0]]])
    # p_t = (1 - eps) p_true + eps p_other + eps, per pixel
    pts = [(1 - EPS) * 0.9 + EPS * 0.1 + EPS, (1 - EPS) * 0.8 + EPS * 0.2 + EPS,
           (1 - EPS) * 0.4 + EPS * 0.6 + EPS, (1 - EPS) * 0.9 + EPS * 0.1 + EPS]
    hand = sum(-(1 - pt) ** 2 * math.log(pt) for pt in pts) / 4
    got = float(M.focal_loss(probs, mask))
    assert got == pytest.approx(hand, rel=1e-12)
    # without the smoothing: (0.01 ln(1/0.9) + 0.04 ln(1/0.8) + 0.36 ln(1/0.4) + 0.01 ln(1/0.9)) / 4 = 0.0852
    assert got == pytest.approx(0.085224, abs=2e-5)
    # an average over the two channels as well (the earlier MONAI call) would give about half of it
    assert got > 1.9 * 0.085224 / 2


def test_dice_loss_has_smoothing_one_and_averages_over_images():
    p1 = torch.tensor([[[0.9, 0.2], [0.6, 0.1]], [[0.5, 0.5], [0.0, 0.0]]], dtype=torch.float64)
    mask = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 0]]])
    # image 0: 1 - (2 * 0.9 + 1) / (1.8 + 1 + 1); image 1 (empty mask): 1 - 1 / (1.0 + 0 + 1)
    hand = ((1 - 2.8 / 3.8) + (1 - 1 / 2.0)) / 2
    assert float(M.dice_loss(p1, mask)) == pytest.approx(hand, rel=1e-12)
    with pytest.raises(ConfigError, match="dice_loss"):
        M.dice_loss(p1, mask[:, :1])


def test_mvfa_loss_on_a_fixed_map_and_mask_equals_the_hand_sum():
    # one level, one patch (1 x 1 grid, so the upsampled map is constant) with abnormal probability 0.8
    token = torch.tensor([[_unit(_angle_for_gap(math.log(4.0)))]], dtype=torch.float64)
    out = _FixedTokens(token, (1, 1))(torch.zeros(1))
    mask = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    bce = -math.log(0.8)  # label 1, mean det probability 0.8
    pt_lesion, pt_normal = (1 - EPS) * 0.8 + EPS * 0.2 + EPS, (1 - EPS) * 0.2 + EPS * 0.8 + EPS
    focal = (-(1 - pt_lesion) ** 2 * math.log(pt_lesion) - 3 * (1 - pt_normal) ** 2 * math.log(pt_normal)) / 4
    dice = 1 - (2 * 0.8 + 1) / (4 * 0.8 + 1 + 1)
    got = float(M.MVFALoss()(out, TEXT, torch.tensor([1]), mask))
    assert got == pytest.approx(bce + focal + dice, abs=1e-6)
    assert float(M.MVFALoss()(out, TEXT, torch.tensor([1]))) == pytest.approx(bce, abs=1e-6)  # image-level: BCE only


# ---- item 4: which adapters learn (train_few.py, train_zero.py) -------------------------------


def _params(model, family):
    return {f"{s}.{n}": p.detach().clone() for s in model.levels
            for n, p in getattr(model.adapters[str(s)], family).named_parameters()}


def _one_step(model, pixel_level: bool):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 16, 16)
    text = torch.nn.functional.normalize(torch.randn(2, model.dim), dim=1)
    opt = model.optimizers(lr=M.OFFICIAL_LR["few-shot"])
    mask = torch.zeros(2, 16, 16)
    mask[1, :6, :6] = 1
    before = {f: _params(model, f) for f in ("seg", "det")}
    opt.zero_grad()
    M.MVFALoss()(model(x), text, torch.tensor([0, 1]), mask if pixel_level else None).backward()
    seg_grads = [p.grad for p in model.adapter_parameters("seg")]
    opt.step(pixel_level)
    after = {f: _params(model, f) for f in ("seg", "det")}
    changed = {f: {k for k in before[f] if not torch.equal(before[f][k], after[f][k])} for f in before}
    return opt, changed, seg_grads


def test_image_level_batches_step_only_the_detection_adapters(tiny_vit):
    model = M.MVFA(tiny_vit, seed=0)
    opt, changed, seg_grads = _one_step(model, pixel_level=False)
    # the seg adapters do get gradients (their outputs feed the residual stream) ...
    assert any(g is not None and g.abs().sum() > 0 for g in seg_grads)
    # ... but only the det adapters move; the last level's det.up feeds nothing that is scored, so it has no gradient
    assert changed["seg"] == set()
    assert changed["det"] == {f"{s}.{n}" for s in (1, 2, 3) for n in ("down.weight", "up.weight")} - {"3.up.weight"}
    assert opt.to_step(False) == [opt.det] and opt.seg.state == {}  # the seg Adam never stepped
    for o in (opt.seg, opt.det):
        assert o.defaults["betas"] == (0.5, 0.999) and o.defaults["lr"] == 1e-3
    assert {id(p) for g in opt.seg.param_groups for p in g["params"]} == {id(p) for p in model.adapter_parameters("seg")}


def test_pixel_level_batches_step_both_adapter_families_and_the_state_round_trips(tiny_vit):
    model = M.MVFA(tiny_vit, seed=0)
    opt, changed, _ = _one_step(model, pixel_level=True)
    assert changed["seg"] == {"1.down.weight", "1.up.weight", "2.down.weight", "2.up.weight", "3.down.weight"}
    assert changed["det"] == {"1.down.weight", "1.up.weight", "2.down.weight", "2.up.weight", "3.down.weight"}
    again = M.MVFA(tiny_vit, seed=0).optimizers(lr=1e-3)
    again.load_state_dict(opt.state_dict())
    assert len(again.seg.state) == len(opt.seg.state) == 5
    with pytest.raises(ConfigError, match="lr"):
        model.optimizers(lr=0)
    with pytest.raises(ConfigError, match="adapter family"):
        model.adapter_parameters("cls")
    with pytest.raises(ConfigError, match="'seg' and 'det'"):
        again.load_state_dict({"seg": {}})


# ---- item 5: the memory bank keeps each support image's class token (train_few.py) --------------------


def test_memory_bank_rows_include_the_class_token_of_each_support_image(tiny_vit):
    model = M.MVFA(tiny_vit, seed=0)
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    bank = M.build_memory_bank(model, images, batch=2)  # two batches: the rows of both are stacked
    assert bank.size == 3 * (1 + 4) and bank.rows_per_image == [5, 5, 5]
    assert [tuple(t.shape) for t in bank.det] == [(15, 16)] * 3
    out = model(images)
    assert torch.allclose(bank.seg[1][0], out.seg_cls[1][0], atol=1e-6)  # image 0: class token first ...
    assert torch.allclose(bank.seg[1][1:5], out.seg[1][0], atol=1e-6)  # ... then its 2 x 2 patches
    assert torch.allclose(bank.det[2][5], out.det_cls[2][1], atol=1e-6)  # image 1 starts at row 5
    assert M.build_memory_bank(model, images, class_token=False).size == 3 * 4
    # the queries stay patch tokens only: the scored maps are the 2 x 2 grid
    assert [tuple(t.shape) for t in out.seg] == [(3, 4, 16)] * 3


def test_memory_bank_of_a_cnn_has_no_class_token_rows():
    model = M.MVFA(_TinyCNN(), seed=0)
    out = model(torch.zeros(2, 3, 8, 8))
    assert out.grids == [(4, 4), (2, 2)] and out.seg_cls == [None, None]
    bank = M.build_memory_bank(model, torch.randn(2, 3, 8, 8))
    assert [t.shape[0] for t in bank.seg] == [2 * 16, 2 * 4] and bank.rows_per_image == [16, 4]


# ---- item 6: protocol official | corrected (dataset/medical_few.py; CLIP/clip.py + model.py build with nn.GELU) ------------


def _activations(net) -> set[str]:
    from open_clip.transformer import QuickGELU

    return {type(m).__name__ for m in net.modules() if isinstance(m, (QuickGELU, nn.GELU))}


def test_clip_protocol_switches_the_normalisation_and_the_activation_and_nothing_else():
    from medad.backbones.clip_openclip import build_openclip

    built = {}
    for protocol in ("corrected", "official"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BackboneWarning)
            built[protocol] = build_openclip("clip-vit-b-16", arch="ViT-B-16", default_tag="openai", native_size=224,
                                             image_size=32, levels=(3, 6, 9, 12), description="", pretrained=None,
                                             device="meta", resize="squash", protocol=protocol)
    fixed, official = built["corrected"], built["official"]
    # activation: QuickGELU (the OpenAI weights') against nn.GELU (MVFA-AD's rebuilt model), in both towers
    assert _activations(fixed.model) == {"QuickGELU"} and fixed.activation == "QuickGELU"
    assert _activations(official.model) == {"GELU"} and official.activation == "nn.GELU"
    # normalisation: CLIP's mean/std against none (images in [0, 1])
    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3) * 5
    raw = fixed.preprocess.unnormalised()(image)
    mean, std = torch.tensor(OPENAI_MEAN).view(3, 1, 1), torch.tensor(OPENAI_STD).view(3, 1, 1)
    assert torch.equal(official.preprocess(image), raw) and float(raw.min()) >= 0 and float(raw.max()) <= 1
    assert torch.allclose(fixed.preprocess(image), (raw - mean) / std)
    # nothing else: the same parameters, sizes, levels and resizing
    a, b = fixed.model.state_dict(), official.model.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    for attr in ("image_size", "default_levels", "embed_dim", "stage_widths"):
        assert getattr(fixed, attr) == getattr(official, attr)
    assert (fixed.preprocess.size, fixed.preprocess.resize) == (official.preprocess.size, official.preprocess.resize)
    # recorded, in a word and in a sentence
    assert (fixed.protocol, official.protocol) == ("corrected", "official")
    assert official.info()["protocol"] == "official" and "nn.GELU" in official.protocol_description()
    assert "QuickGELU" in fixed.protocol_description()
    with pytest.raises(ConfigError, match="quick_gelu"):
        build_openclip("clip-vit-b-16", arch="ViT-B-16", default_tag="openai", native_size=224, levels=(3,),
                       description="", pretrained=None, device="meta", quick_gelu=True, protocol="official")


def test_cnn_protocol_switches_only_the_normalisation_and_says_there_is_no_gelu():
    fixed = load_backbone("effnet-lite0", image_size=32, resize="squash")
    official = load_backbone("effnet-lite0", image_size=32, resize="squash", protocol="official")
    image = np.full((6, 6, 3), 51, np.uint8)
    assert torch.allclose(official.preprocess(image), torch.full((3, 32, 32), 0.2))
    assert torch.allclose(fixed.preprocess(image), torch.full((3, 32, 32), (0.2 - 0.5) / 0.5))
    a, b = fixed.state_dict(), official.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert official.activation is None and "no GELU" in official.protocol_description()
    with pytest.raises(ConfigError, match="protocol"):
        load_backbone("effnet-lite0", protocol="paper")
    with pytest.raises(ConfigError, match="load it again"):
        official.apply_input_protocol("corrected")


def test_standin_protocol_switches_only_its_input(monkeypatch):
    """The STAND-IN through load_backbone, with its fitted maps replaced by fixed ones (the fit takes a minute)."""
    import medad.backbones.standin as S

    def fake_fit(vision, text, variant, seed=0, refit=False):
        maps = {s: {"A": torch.zeros(w + 1, 1280), "r2": 0.0} for s, w in enumerate(vision.stage_widths[:-1], 1)}
        return {}, {"A": torch.zeros(text.width + 1, 1280), "lambda": 1.0, "cv_top1": 0.0, "heldout": {},
                    "level_maps": maps}

    monkeypatch.setattr(S, "load_fit", fake_fit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fixed = load_backbone("standin-effnet-lite0-minilm", image_size=32, resize="squash")
        official = load_backbone("standin-effnet-lite0-minilm", image_size=32, resize="squash", protocol="official")
    image = np.full((5, 5, 3), 255, np.uint8)
    assert torch.allclose(official.preprocess(image), torch.ones(3, 32, 32))
    assert torch.allclose(fixed.preprocess(image), torch.ones(3, 32, 32))  # (1 - 0.5) / 0.5
    assert torch.allclose(fixed.preprocess(np.zeros((5, 5, 3), np.uint8)), -torch.ones(3, 32, 32))
    a, b = fixed.state_dict(), official.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert (fixed.protocol, official.protocol) == ("corrected", "official")
    assert official.activation is None and "no GELU" in official.protocol_description()


# ---- the shortcut check: blank the endoscopy frames' overlay box before scoring --------------------------------


def test_blank_boxes_sets_each_box_to_the_backbones_black_and_leaves_the_rest(tiny_vit):
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    keep = images.clone()
    out = M.blank_boxes(images, [(0.0, 0.5, 0.25, 1.0)], tiny_vit)  # columns 0-1, rows 4-7
    black = ((0 - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD)).view(1, 3, 1, 1)
    assert torch.allclose(out[:, :, 4:, :2], black.expand(2, 3, 4, 2))
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[4:, :2] = True
    assert torch.equal(out[:, :, ~inside], images[:, :, ~inside]) and torch.equal(images, keep)  # a copy
    # under the official protocol black is 0: images in [0, 1]
    official = _TinyCNN()
    official.apply_input_protocol("official")
    assert float(M.blank_boxes(images, [(0.0, 0.5, 0.25, 1.0)], official)[:, :, 4:, :2].abs().max()) == 0.0
    with pytest.raises(ConfigError, match="x0 < x1"):
        M.blank_boxes(images, [(0.5, 0.0, 0.25, 1.0)], tiny_vit)


def test_blank_boxes_uses_the_shared_overlay_boxes_and_refuses_a_cropping_backbone():
    from medad.data.endoscopy_ad import OVERLAY_BOXES
    from medad.train import egc_experiment

    assert egc_experiment.OVERLAY_BOXES is OVERLAY_BOXES  # one constant, two chapters
    cnn = _TinyCNN()
    images = torch.ones(1, 3, 100, 100)
    out = M.blank_boxes(images, OVERLAY_BOXES, cnn)
    black = -2.0  # (0 - 0.5) / 0.25
    assert float(out[0, 0, 62:, :34].max()) == black and float(out[0, 0, 4:62, :15].max()) == black
    assert float(out[0, 0, :4, :].min()) == 1.0 and float(out[0, 0, :62, 15:].min()) == 1.0
    assert float(out[0, 0, 62:, 34:].min()) == 1.0
    cnn._preprocess = Preprocess(8, (0.5,) * 3, (0.25,) * 3, "crop")
    with pytest.raises(ConfigError, match="squash"):
        M.blank_boxes(images, OVERLAY_BOXES, cnn)
