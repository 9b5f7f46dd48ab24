"""MVFA: adapters, text ensemble, memory bank, combination, losses, augmentation, protocol and bad input.

Real CLIP is exercised with random weights only (no CLIP weights exist here): ViT-B/16 at 32 px for
training end to end, ViT-L/14-336 at 240 px on the meta device for the paper's shapes.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from medad.backbones import BackboneWarning, WeightsNotFound, load_backbone
from medad.errors import ConfigError
from medad.models import mvfa as M
from medad.train import mvfa_experiment as X

TINY = 32  # 2 x 2 patches of ViT-B/16: the real code path at a fraction of the compute


@pytest.fixture(scope="module")
def vit():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BackboneWarning)
        return load_backbone("clip-vit-b-16", pretrained=None, image_size=TINY, seed=0, resize="squash")


def _fake_text(backbone, object_name, batch=128):
    """A seeded unit 2 x d matrix: a random CLIP's text tower on 420 sentences costs minutes on this CPU."""
    g = torch.Generator().manual_seed(sum(map(ord, object_name)))
    return torch.nn.functional.normalize(torch.randn(2, backbone.embed_dim, generator=g), dim=1)


@pytest.fixture
def fast_text(monkeypatch):
    monkeypatch.setattr(M, "text_matrix", _fake_text)




# ---- adapters -----------------------------------------------------------------------------------

def test_level_adapters_mix_residually_and_expose_the_middle_output():
    torch.manual_seed(0)
    mod = M.LevelAdapters(width=12, dim=5)
    x = torch.randn(2, 7, 12)
    y = mod(x)
    _, seg_out = mod.seg(x)
    _, det_out = mod.det(x)
    assert torch.allclose(y, 0.8 * x + 0.1 * seg_out + 0.1 * det_out)
    assert mod.seg_mid.shape == (2, 7, 5) and mod.det_mid.shape == (2, 7, 5)
    assert all(layer.bias is None for layer in (mod.seg.down, mod.seg.up, mod.det.down, mod.det.up))
    proj = M.LevelAdapters(width=12, dim=5, residual=False)
    assert torch.equal(proj(x), x)  # projector-only: the stream flows on unchanged


def test_mvfa_on_clip_vit_trains_only_adapters_and_adapted_tokens_reach_later_levels(vit):
    model = M.MVFA(vit, levels=(3, 6, 9, 12), seed=0)
    assert {n.split(".")[0] for n, _ in model.named_parameters()} == {"adapters"}
    x = vit.preprocess_batch([np.full((40, 40), 100, np.uint8), np.zeros((40, 40, 3), np.uint8)])
    out = model(x)
    assert [t.shape for t in out.seg] == [(2, 4, vit.embed_dim)] * 4  # class token dropped, 2 x 2 grid
    assert out.grids == [(2, 2)] * 4
    # the adapters change what the later levels see: zero them and the last level's tokens differ
    before = out.seg[3].detach().clone()
    with torch.no_grad():
        model.adapters["3"].seg.up.weight.mul_(5.0)
    assert not torch.allclose(model(x).seg[3], before)
    text = _fake_text(vit, "Brain")
    mask = torch.zeros(2, TINY, TINY)
    mask[1, :8, :8] = 1
    loss = M.MVFALoss()(model(x), text, torch.tensor([0, 1]), mask)
    loss.backward()
    assert torch.isfinite(loss)
    no_grad = {n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0}
    # only the last level's output weights are unused: nothing after the last adapted block is scored
    assert no_grad == {"adapters.12.seg.up.weight", "adapters.12.det.up.weight"}
    assert all(p.grad is None for p in vit.parameters())


def test_vit_l_14_336_at_240_gets_adapters_after_blocks_6_12_18_24_with_768_wide_tokens():
    """The paper's backbone, on the meta device: shapes only."""
    from medad.backbones import get_spec
    from medad.backbones.clip_openclip import OpenCLIPBackbone, _open_clip

    spec = get_spec("clip-vit-l-14-336")
    net = _open_clip().create_model("ViT-L-14-336", force_image_size=240, force_quick_gelu=True, device="meta")
    b = OpenCLIPBackbone(net, name=spec.name, arch="ViT-L-14-336", image_size=240, levels=(6, 12, 18, 24),
                         weights_source="none (meta)", pretrained=False, description=spec.description)
    model = M.MVFA(b)
    assert model.levels == (6, 12, 18, 24)
    assert model.adapters["6"].seg.down.weight.shape == (768, 1024)
    out = model(torch.empty(1, 3, 240, 240, device="meta"))
    assert [tuple(t.shape) for t in out.det] == [(1, 289, 768)] * 4


# ---- text ---------------------------------------------------------------------------------------

class _WordCountText:
    """A stand-in text encoder with a known answer: sentence -> (number of words, 1, 0, ...)."""

    embed_dim = 4

    def encode_text(self, texts, normalize=False):
        out = torch.tensor([[len(t.split()), 1.0, 0.0, 0.0] for t in texts])
        return torch.nn.functional.normalize(out, dim=1) if normalize else out


def test_prompt_ensemble_sizes_and_text_matrix_averages_normalised_sentences():
    normal, abnormal = M.prompt_sentences("Chest X-ray film")
    assert len(normal) == 35 * 7 and len(abnormal) == 35 * 5
    assert "a photo of the Chest X-ray film without defect." in normal
    assert "a bad photo of a damaged Chest X-ray film." in abnormal
    t = M.text_matrix(_WordCountText(), "Brain", batch=50)
    assert t.shape == (2, 4)
    assert torch.allclose(t.norm(dim=1), torch.ones(2), atol=1e-6)
    for row, sentences in zip(t, M.prompt_sentences("Brain")):
        emb = torch.nn.functional.normalize(torch.tensor([[len(s.split()), 1.0, 0, 0] for s in sentences]), dim=1)
        assert torch.allclose(row, torch.nn.functional.normalize(emb.mean(0), dim=0), atol=1e-6)
    with pytest.raises(ConfigError):
        M.object_name("mnist")
    with pytest.raises(ConfigError):
        M.prompt_sentences("  ")


# ---- scores ---------------------------------------------------------------------------------------

def test_memory_bank_matrix_product_equals_the_per_patch_loop():
    g = torch.Generator().manual_seed(0)
    q, bank = torch.randn(3, 10, 8, generator=g), torch.randn(50, 8, generator=g)
    fast = M.memory_bank_scores(q, bank, chunk=7)
    assert torch.allclose(fast, M.memory_bank_scores_loop(q, bank), atol=1e-5)
    # a query equal to a bank entry scores 0; one orthogonal to the whole bank scores 1
    eye = torch.eye(8)
    s = M.memory_bank_scores(torch.stack([2 * eye[1], eye[6]])[None], eye[:4])[0]
    assert abs(float(s[0])) < 1e-6 and abs(float(s[1]) - 1.0) < 1e-6
    with pytest.raises(ConfigError):
        M.memory_bank_scores(q, torch.randn(0, 8))
    with pytest.raises(ConfigError):
        M.memory_bank_scores(q, torch.randn(5, 9))


def _scores(n, seed=0, nan_few=False):
    r = np.random.default_rng(seed)
    few = np.full((n, 2, 4, 4), np.nan) if nan_few else r.random((n, 2, 4, 4))
    return M.BranchScores(r.random((n, 2, 4, 4)), few, r.random((n, 2)), r.random(n * 2).reshape(n, 2) * 10)


def test_combine_normalises_each_branch_over_the_chosen_images():
    test, ref = _scores(6, 0), _scores(5, 1)
    out = M.combine(test, ref, pixel_level=False, normalisation="test")
    zero, few = test.det_zero.sum(1), test.det_few.sum(1)
    expect = 0.5 * (zero - zero.min()) / np.ptp(zero) + 0.5 * (few - few.min()) / np.ptp(few)
    assert np.allclose(out.image, expect) and out.maps is None
    rz, rf = ref.det_zero.sum(1), ref.det_few.sum(1)
    expect_ref = 0.5 * (zero - rz.min()) / np.ptp(rz) + 0.5 * (few - rf.min()) / np.ptp(rf)
    assert np.allclose(M.combine(test, ref, False).image, expect_ref)
    pix = M.combine(test, ref, pixel_level=True, branch="zero")
    assert np.allclose(pix.image, test.det_zero.sum(1))  # zero-shot on masked data: the det branch (test_zero.py)
    pix = M.combine(test, ref, pixel_level=True, branch="both")
    assert np.allclose(pix.image, pix.maps.reshape(6, -1).max(1))  # few-shot on masked data: max of the map
    with pytest.raises(ConfigError):
        M.combine(test, None, False)  # reference normalisation needs reference scores
    with pytest.raises(ConfigError):
        M.combine(_scores(4, nan_few=True), None, True, normalisation="test")  # no memory bank, both branches
    with pytest.raises(ConfigError):
        M.combine(test, ref, False, branch="all")


def test_augment_x11_counts_flips_and_moves_masks_with_images():
    img = torch.zeros(2, 3, 16, 16)
    img[:, :, 2:6, 3:7] = 1.0
    masks = img[:, 0] > 0.5
    out, out_m = M.augment_x11(img, masks)
    assert out.shape == (22, 3, 16, 16) and out_m.shape == (22, 16, 16) and out_m.dtype == torch.bool
    assert torch.equal(out[:2], img)
    assert torch.equal(out[18:20], img.flip(-1)) and torch.equal(out[20:22], img.flip(-2))
    # every augmented mask covers the bright square of its augmented image
    bright = out[:, 0] > 0.5
    assert (bright & out_m).sum() >= 0.8 * bright.sum()
    # the translations really move the square
    assert not torch.equal(out[10], img[0])


# ---- protocol ---------------------------------------------------------------------------------------

def test_support_sets_are_seeded_disjoint_and_too_large_k_is_a_clear_error():
    labels = np.array([0] * 6 + [1] * 3)
    a = X.support_indices(labels, 2, seed=1)
    assert np.array_equal(a[0], X.support_indices(labels, 2, seed=1)[0])
    assert set(a[0]) <= set(range(6)) and set(a[1]) <= {6, 7, 8}
    with pytest.raises(ConfigError, match="only 3"):
        X.support_indices(labels, 4, seed=0, where="lgg_brain_ad few-shot")


def test_unknown_datasets_are_refused_by_the_schema_and_the_bmad_names_are_known():
    from medad import profiles

    with pytest.raises(ConfigError, match="kvasir_polyps"):
        profiles.resolve_named("mvfa", "quick", {"datasets": ["lgg_brain_ad", "kvasir_polyps"]})
    # the six BMAD sub-datasets run unchanged when a user has BMAD: known names, MVFA's object names, masks
    bmad = ["bmad_brainmri", "bmad_liverct", "bmad_resc", "bmad_oct17", "bmad_chestxray", "bmad_his"]
    assert profiles.resolve_named("mvfa", "quick", {"datasets": bmad})["datasets"] == bmad
    assert M.object_name("bmad_liverct") == "Liver"
    assert [X.has_masks(d) for d in bmad] == [True, True, True, False, False, False]


def test_real_clip_without_weights_is_a_clear_error(monkeypatch, tmp_path):
    import medad.backbones.clip_openclip as oc
    from medad import profiles

    monkeypatch.setenv("MEDAD_WEIGHTS", str(tmp_path))
    monkeypatch.setattr(oc, "cached_tag_file", lambda *a, **k: None)
    monkeypatch.setattr(oc, "hub_reachable", lambda: False)
    with pytest.raises(WeightsNotFound, match="STAND-IN|stand-in"):
        X.load_backbone_for(profiles.resolve_named("mvfa", "full"))


def _cfg(**kw):
    from medad import profiles

    given = dict(levels=[6, 12], map_size=8, k=2, seeds=[0, 1], epochs=2, check_every=1, batch_size=8, test_images=12,
                 select_images=6, full_normal_images=4, eval_batch=8, precision="fp32", channels_last=False, n_boot=50)
    return profiles.resolve_named("mvfa", "long_cpu", {**given, **kw})


def test_few_shot_end_to_end_on_a_random_clip_vit_with_both_selections(vit, fast_text):
    from medad.experiment.record import RecordingOpener

    prep = X.prepare(RecordingOpener(synthetic=True, n_synthetic=24), "lgg_brain_ad", vit, _cfg())
    value, details = X.few_shot(prep, vit, 2, 0, _cfg(), official=True)
    blk = value["blocks"][0]
    for method in ["MVFA", "MVFA, det branch", "MVFA, test-set min-max", "MVFA, level 12 only",
                   "MVFA, checkpoint chosen on test (official)", "MVFA, checkpoint chosen on validation (same run)"]:
        assert 0.0 <= X.image_auc(blk["labels"], blk["scores"][method]) <= 1.0, method
    assert "MVFA, level 6 only" in blk["pixel"] and "MVFA, det branch" not in blk["pixel"]
    # K normal x 11 augmentations x (class token + 2x2 patches): the official bank keeps the class token
    assert details.bank.size == 2 * 11 * (1 + 4) and len(value["training"]["validations"]) == 2


def test_frozen_baselines_give_one_row_per_method_over_seeds(vit, fast_text):
    from medad.experiment.record import RecordingOpener

    prep = X.prepare(RecordingOpener(synthetic=True, n_synthetic=24), "chest_xray", vit, _cfg())
    value = X.frozen_baselines(prep, vit, 2, [0, 1], _cfg())
    methods = {(b["setting"], m) for b in value["blocks"] for m in b["scores"]}
    assert methods == {("zero-shot", "WinCLIP-style (frozen, text)"), ("few-shot K=2", "PatchCore-style (frozen memory bank)"),
                       ("full-normal (4 images)", "PatchCore-style (frozen memory bank)")}
    rows = X.table_rows({"baselines/chest_xray/None": value}, "test", n_boot=50)
    few = next(r for r in rows if r["setting"] == "few-shot K=2")
    per_seed = [X.image_auc(b["labels"], b["scores"]["PatchCore-style (frozen memory bank)"])
                for b in value["blocks"] if b["setting"] == "few-shot K=2"]
    assert few["seeds"] == 2 and few["value"] == pytest.approx(np.mean(per_seed))
    assert few["seed_sd"] == pytest.approx(np.std(per_seed, ddof=1))
    assert 0.0 <= few["ci_low"] <= few["ci_high"] <= 1.0 or math.isnan(few["ci_low"])
