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


CFG = {"levels": None, "map_size": 8, "epochs": 2, "check_every": 1, "batch_size": 8, "lr": 1e-3,
       "test_images": 12, "select_images": 6, "full_normal_images": 4, "eval_batch": 8, "det_branch": True,
       "zero_epochs": 1, "zero_lr": 1e-4, "zero_check_every": 0, "zero_train_per_class": 3,
       "zero_select_per_dataset": 6}


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


def test_unknown_dataset_and_pixel_auc_without_masks_are_clear_errors():
    with pytest.raises(ConfigError, match="kvasir_polyps"):
        X.check_datasets(["lgg_brain_ad", "kvasir_polyps"], "zero-shot leave-one-out")
    # the six BMAD sub-datasets run unchanged when a user has BMAD: known names, MVFA's object names, masks
    bmad = ["bmad_brainmri", "bmad_liverct", "bmad_resc", "bmad_oct17", "bmad_chestxray", "bmad_his"]
    assert X.check_datasets(bmad) == bmad and M.object_name("bmad_liverct") == "Liver"
    assert [X.has_masks(d) for d in bmad] == [True, True, True, False, False, False]
    with pytest.raises(ConfigError, match="without masks"):
        X.pixel_auc(np.zeros((2, 4, 4)), None, "chest_xray")


def test_real_clip_without_weights_is_a_clear_error(monkeypatch, tmp_path):
    import medad.backbones.clip_openclip as oc

    monkeypatch.setenv("MEDAD_WEIGHTS", str(tmp_path))
    monkeypatch.setattr(oc, "cached_tag_file", lambda *a, **k: None)
    monkeypatch.setattr(oc, "hub_reachable", lambda: False)
    with pytest.raises(WeightsNotFound, match="STAND-IN|stand-in"):
        X.load_backbone_for({"backbone": "clip-vit-l-14-336", "image_size": 240, "levels": [6, 12, 18, 24]})


def test_few_shot_end_to_end_on_synthetic_data_with_both_selection_protocols(vit, fast_text):
    opener = X.RecordingOpener(synthetic=True, n_synthetic=24)
    prep = X.prepare(opener, "lgg_brain_ad", vit, CFG)
    res = X.few_shot(prep, vit, 2, 0, CFG, track_test=True)
    table = {(r["method"], r["metric"]): r["value"] for r in res.rows}
    for key in [("MVFA", "image AUC"), ("MVFA", "pixel AUC"), ("MVFA, det branch", "image AUC"),
                ("MVFA, test-set min-max", "image AUC"), ("MVFA, level 12 only", "pixel AUC"),
                ("MVFA, checkpoint chosen on test", "image AUC")]:
        assert 0.0 <= table[key] <= 1.0, key
    assert table[("MVFA, checkpoint chosen on test", "image AUC")] >= table[
        ("MVFA, checkpoint chosen on validation (same run)", "image AUC")]
    # K normal x 11 augmentations x (class token + 2x2 patches): the official bank keeps the class token
    assert len(res.history["checks"]) == 2 and res.bank.size == 2 * 11 * (1 + 4)


def test_training_resumes_from_its_checkpoint(vit, fast_text, tmp_path):
    opener = X.RecordingOpener(synthetic=True, n_synthetic=24)
    prep = X.prepare(opener, "chest_xray", vit, {**CFG, "full_normal_images": None, "test_images": 8})
    full = X.few_shot(prep, vit, 2, 3, CFG, checkpoint=tmp_path / "a.pt")
    X.few_shot(prep, vit, 2, 3, {**CFG, "epochs": 1}, checkpoint=tmp_path / "b.pt")  # stopped after epoch 1
    resumed = X.few_shot(prep, vit, 2, 3, CFG, checkpoint=tmp_path / "b.pt")
    # resumed = uninterrupted, number for number (which also shows the run is deterministic with a seed)
    assert resumed.history["loss"] == pytest.approx(full.history["loss"])
    assert [c["val"] for c in resumed.history["checks"]] == pytest.approx([c["val"] for c in full.history["checks"]])
    assert [r["value"] for r in resumed.rows] == pytest.approx([r["value"] for r in full.rows])


def test_zero_shot_leave_one_out_never_reads_the_held_out_dataset_before_testing(vit, fast_text):
    opener = X.RecordingOpener(synthetic=True, n_synthetic=16)
    rows, _ = X.zero_shot_loo(opener, "endoscopy_ad", ["chest_xray", "endoscopy_ad", "lgg_brain_ad"], vit, CFG, seed=0)
    held = [i for i, (name, _) in enumerate(opener.opened) if name == "endoscopy_ad"]
    assert [opener.opened[i][1] for i in held] == ["test"]  # only its test split ...
    assert held == [len(opener.opened) - 1]  # ... opened after every training read
    assert {r["dataset"] for r in rows} == {"endoscopy_ad"} and {r["metric"] for r in rows} == {"image AUC", "pixel AUC"}
    with pytest.raises(ConfigError, match="unknown dataset"):
        X.zero_shot_loo(opener, "lgg_brain_ad", ["lgg_brain_ad", "mnist"], vit, CFG, seed=0)


def test_frozen_baselines_and_tidy_table(vit, fast_text):
    opener = X.RecordingOpener(synthetic=True, n_synthetic=24)
    prep = X.prepare(opener, "chest_xray", vit, CFG)
    rows = X.frozen_baselines(prep, vit, 2, [0, 1], CFG)
    methods = {(r["setting"], r["method"]) for r in rows}
    assert ("zero-shot", "WinCLIP-style (frozen, text)") in methods
    assert ("few-shot K=2", "PatchCore-style (frozen memory bank)") in methods
    assert ("full-normal (4 images)", "PatchCore-style (frozen memory bank)") in methods
    table = X.tidy(rows)
    few = table[(table.setting == "few-shot K=2")].iloc[0]
    vals = [r["value"] for r in rows if r["setting"] == "few-shot K=2"]
    assert few.seeds == 2 and few.value == pytest.approx(np.mean(vals))
    assert few.ci_low <= few.value <= few.ci_high or math.isnan(few.ci_low)
