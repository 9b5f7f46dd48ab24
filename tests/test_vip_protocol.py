"""ViP as the official code runs it (issue 21): prompts ending with a period, augmented views through the feature
cache, Dassl's learning-rate rule and dropped last batch, CoOp/KgCoOp as their code builds them, and the per-backbone
CLIP settings. Official files were read at xiaofang007/ViP ea4532c, KaiyangZhou/Dassl.pytorch and htyao89/KgCoOp."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import fixtures as fx
from medad import features_cache as fc
from medad.backbones import BackboneWarning, get_spec, load_backbone
from medad.backbones.base import Backbone, ImageFeatures
from medad.errors import ConfigError, DataError
from medad.experiment.schedules import dassl_warmup_cosine, epoch_batches, steps_per_epoch
from medad.models import vip as V
from test_vip import TinyBackbone

SYMPTOM = "patchy consolidation in one lobe"
M = 4


@pytest.fixture(scope="module")
def clip():
    """open_clip ViT-B/16 with RANDOM weights (no CLIP weights exist offline); only its text side matters here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BackboneWarning)
        return load_backbone("clip-vit-b-16", pretrained=None, image_size=32, seed=0)


class MiniLMText(Backbone):
    """The STAND-IN's text path alone: MiniLM's tokenizer, word embeddings and context insertion (no DeViSE map)."""

    name, has_text, embed_dim = "minilm-text", True, 384

    def __init__(self):
        super().__init__()
        from medad.backbones.text_minilm import MiniLMText as Encoder

        self.text = Encoder()
        self.text_width = self.text.width
        self.freeze()

    def encode_image(self, images, levels=None, inserts=None) -> ImageFeatures:
        raise NotImplementedError

    def tokenize(self, texts):
        return self.text.tokenize(texts)

    def token_embeddings(self, tokens):
        return self.text.token_embeddings(tokens)

    def encode_text(self, texts, normalize=False):
        return self.text.encode(texts if not isinstance(texts, list) else self.tokenize(texts))

    def encode_text_with_context(self, texts, context, normalize=False):
        return self.text.encode_with_context(texts, self._context_batch(context, len(texts)))


@pytest.fixture(scope="module")
def minilm():
    return MiniLMText()


# ---- 1. every prompt ends with a period -----------------------------------------------------------------------

def test_prompt_text_adds_one_final_period():
    assert V.prompt_text(SYMPTOM) == SYMPTOM + "."
    assert V.prompt_text(" clear lungs. ") == "clear lungs."


def test_clip_tokens_are_the_official_prompt_without_its_x_placeholders(clip):
    """trainers/ViP.py tokenises "X X X X <symptom>." and replaces positions 1..4 by the context vectors."""
    model = V.PromptClassifier(clip, [[SYMPTOM], ["clear dark lungs"]], context=M, aggregate="merge")
    ids = model.tokens.ids[0]
    n = int(model.tokens.mask[0].sum())
    assert ids[:n].tolist() == [49406, 47488, 41111, 530, 637, 46325, 269, 49407]  # SOT patchy consolidation in one lobe . EOT
    assert clip._tokenizer.decoder[269] == ".</w>"
    official = clip._tokenizer([" ".join(["X"] * M) + " " + SYMPTOM + "."])[0]
    assert official[1:1 + M].tolist() == [343] * M  # the X placeholders
    assert torch.equal(torch.cat([official[:1], official[1 + M:]]), ids[:len(ids) - M])


def _official_text_feature(clip, text: str, ctx: torch.Tensor) -> torch.Tensor:
    """ViP's TextEncoder on its PromptLearner output: prefix + ctx + suffix, pooled at the EOT (argmax) position."""
    net = clip.model
    ids = clip._tokenizer([" ".join(["X"] * len(ctx)) + " " + text + "."])
    emb = net.token_embedding(ids)
    x = torch.cat([emb[:, :1], ctx[None], emb[:, 1 + len(ctx):]], dim=1) + net.positional_embedding
    x = net.ln_final(net.transformer(x, attn_mask=net.attn_mask))
    return x[torch.arange(1), ids.argmax(dim=-1)] @ net.text_projection


def test_clip_context_prompt_features_equal_the_official_construction(clip):
    torch.manual_seed(0)
    model = V.PromptClassifier(clip, [[SYMPTOM], ["clear dark lungs"]], context=M, aggregate="merge")
    with torch.no_grad():
        ours = model.text_features()
        for row, text in enumerate([SYMPTOM, "clear dark lungs"]):
            assert torch.allclose(ours[row], _official_text_feature(clip, text, model.context.vectors)[0], atol=1e-5)
        without_period = clip.encode_text_with_context([SYMPTOM], model.context.vectors)[0]
    assert not torch.allclose(ours[0], without_period, atol=1e-3)  # the period changes the feature


def test_standin_text_path_sees_cls_context_words_period_sep(minilm, monkeypatch):
    model = V.PromptClassifier(minilm, [[SYMPTOM], ["clear dark lungs"]], context=M, aggregate="mean")
    ids, mask = model.tokens.ids[0], model.tokens.mask[0].bool()
    assert minilm.text.tokenizer.convert_ids_to_tokens(ids[mask].tolist()) == [
        "[CLS]", "patch", "##y", "consolidation", "in", "one", "lobe", ".", "[SEP]"]
    seen = {}
    real = minilm.text.encode_embedded

    def spy(embeddings, attention):
        seen.update(x=embeddings.detach(), mask=attention)
        return real(embeddings, attention)

    monkeypatch.setattr(minilm.text, "encode_embedded", spy)
    with torch.no_grad():
        model.text_features()
    words = minilm.text.token_embeddings(model.tokens)[0]
    x, m = seen["x"][0], seen["mask"][0]
    assert torch.equal(x[0], words[0]) and torch.equal(x[1:1 + M], model.context.vectors.detach())
    assert torch.equal(x[1 + M:1 + M + 8], words[1:9])  # patch ##y consolidation in one lobe . [SEP]
    assert int(m.sum()) == 1 + M + 8


# ---- 2. augmented views through the cache ----------------------------------------------------------------------

def test_random_resized_crop_box_rules():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, w, h = fc.random_resized_crop_box(300, 200, rng)
        assert 0 <= left and left + w <= 300 and 0 <= top and top + h <= 200
        assert 0.08 * 60000 * 0.9 <= w * h <= 60000 and 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # a 400 x 100 strip with scale (1, 1): no crop of the whole area fits an aspect in [3/4, 4/3], so the
    # fallback centre crop keeps the full height and the widest allowed aspect: w = round(100 * 4/3) = 133
    assert fc.random_resized_crop_box(400, 100, rng, scale=(1.0, 1.0)) == (133, 0, 133, 100)


def _views(tmp_path, n_views=3, seed=7, n=6, **kw):
    from medad.data import open_dataset

    ds = open_dataset("chest_xray", "train", synthetic=True, n=n)
    return ds, fc.augmented_views(TinyBackbone(), ds, n_views=n_views, seed=seed, root=tmp_path, progress=False, **kw)


def test_views_are_seeded_cached_and_differ_from_the_centre_crop(tmp_path):
    ds, views = _views(tmp_path / "a")
    assert views.features.shape == (6, 3, 8) and views.n_views == 3
    assert views.path.name == "chest_xray-synthetic-train-all-views3-seed7.pt"
    assert views.key["views"] == 3 and views.key["view_seed"] == 7 and "random_resized_crop" in views.key["augmentation"]
    _, again = _views(tmp_path / "b", batch_size=2)  # another folder, other batches: the same views
    assert torch.allclose(again.features, views.features, atol=1e-6)
    _, other = _views(tmp_path / "c", seed=8)
    assert not torch.allclose(other.features, views.features, atol=1e-3)
    centre = fc.image_features(TinyBackbone(), ds, root=tmp_path / "a", progress=False).features
    assert (views.features - centre[:, None]).abs().amax(-1).min() > 1e-4  # no view is the centre crop
    assert (views.features[:, 0] - views.features[:, 1]).abs().amax(-1).min() > 1e-6  # views of one image differ
    assert torch.equal(_views(tmp_path / "a")[1].features, views.features)  # read back from the file


def test_views_cache_refuses_another_augmentation_and_resumes(tmp_path, monkeypatch):
    _, full = _views(tmp_path / "ref")
    monkeypatch.setitem(fc.AUGMENTATION, "flip_p", 0.25)
    with pytest.raises(DataError, match="augmentation"):
        _views(tmp_path / "ref")
    monkeypatch.setitem(fc.AUGMENTATION, "flip_p", 0.5)
    calls, real = [], fc.augmented_view

    def stop_in_the_third_call(*args):
        calls.append(1)
        if len(calls) == 16:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(fc, "augmented_view", stop_in_the_third_call)
    with pytest.raises(KeyboardInterrupt):  # 2 images (6 views) per encoder call, saved after images 2 and 4
        _views(tmp_path / "cut", batch_size=6, save_every=2)
    monkeypatch.setattr(fc, "augmented_view", real)
    assert list((tmp_path / "cut").rglob("*.partial"))
    counted = []
    monkeypatch.setattr(fc, "augmented_view", lambda *a: counted.append(1) or real(*a))
    _, resumed = _views(tmp_path / "cut", batch_size=6, save_every=2)
    assert len(counted) == 2 * 3 and torch.allclose(resumed.features, full.features, atol=1e-6)
    with pytest.raises(ConfigError, match="n_views"):
        _views(tmp_path / "x", n_views=0)


def test_draw_takes_one_view_per_image_uniformly():
    n, v = 5, 4
    feats = torch.stack([torch.stack([torch.tensor([i, j], dtype=torch.float32) for j in range(v)]) for i in range(n)])
    views = fc.CachedViews(feats, np.zeros(n), [str(i) for i in range(n)], {})
    idx = torch.tensor([3, 0, 3, 1])
    out = views.draw(idx, torch.Generator().manual_seed(0))
    assert out.shape == (4, 2) and torch.equal(out[:, 0], idx.float())
    again = views.draw(idx, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    drawn = views.draw(torch.zeros(40000, dtype=torch.long), torch.Generator().manual_seed(1))[:, 1]
    counts = torch.bincount(drawn.long(), minlength=v).float()
    assert counts.tolist() and (counts / 40000 - 1 / v).abs().max() < 0.01  # 0.01 ~ 4.6 standard errors
    with pytest.raises(DataError, match="indices"):
        views.draw(torch.tensor([5]), torch.Generator())


# ---- 3. Dassl's learning rate per epoch and the dropped last batch --------------------------------------------

def test_dassl_schedule_at_every_epoch_of_five():
    """By hand from Dassl's ``dassl/optim/lr_scheduler.py`` and defaults:

    - ``scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(max_epoch))``
    - ``if not optim_cfg.WARMUP_RECOUNT: scheduler.last_epoch = optim_cfg.WARMUP_EPOCH`` with
      ``_C.OPTIM.WARMUP_RECOUNT = True`` (so the cosine keeps its own count, from 0)
    - ``ConstantWarmupScheduler.get_lr``: ``if self.last_epoch >= self.warmup_epoch: return
      self.successor.get_last_lr()``, else ``return [self.cons_lr for _ in self.base_lrs]``
    - ``_BaseWarmupScheduler.step``: ``if self.last_epoch >= self.warmup_epoch: self.successor.step(epoch)``
      else ``super().step(epoch)``
    - ViP's ``forward_backward``: ``if (self.batch_idx + 1) == self.num_batches: self.update_lr()``

    lr 0.002, 5 epochs, 1 warm-up epoch at 1e-5: epoch 0 runs at cons_lr; after it the wrapper's count
    reaches 1 and hands over the cosine's lr at its step 0 (0.002); each later epoch steps the cosine once:
    epoch e >= 1 runs at 0.001 * (1 + cos(pi * (e - 1) / 5)).
    """
    expected = [1e-5, 0.002, 0.001 * (1 + math.cos(math.pi / 5)), 0.001 * (1 + math.cos(2 * math.pi / 5)),
                0.001 * (1 + math.cos(3 * math.pi / 5))]
    assert expected[2:] == pytest.approx([0.00180902, 0.00130902, 0.00069098], abs=1e-8)
    got = [dassl_warmup_cosine(e, 0.002, 5, 1, 1e-5) for e in range(5)]
    assert got == pytest.approx(expected, rel=1e-12)


def _dassl_stepped(lr, epochs, warmup, warmup_lr) -> list[float]:
    """torch's CosineAnnealingLR wrapped the way Dassl's ConstantWarmupScheduler steps it, read from the optimiser."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, float(epochs))  # built first, as build_lr_scheduler does
    count = 0  # the wrapper's own last_epoch after its initial step
    opt.param_groups[0]["lr"] = warmup_lr if warmup else lr
    seen = []
    for _ in range(epochs):
        seen.append(opt.param_groups[0]["lr"])
        if count >= warmup:          # past the warm-up: the cosine steps
            with warnings.catch_warnings():  # no optimiser step is taken here: only the learning rate matters
                warnings.simplefilter("ignore", UserWarning)
                cosine.step()
        else:                        # the wrapper steps itself and reads the successor once the warm-up ends
            count += 1
            opt.param_groups[0]["lr"] = cosine.get_last_lr()[0] if count >= warmup else warmup_lr
    return seen


@pytest.mark.parametrize("lr,epochs,warmup", [(0.002, 5, 1), (0.002, 50, 1), (0.001, 7, 2), (0.002, 6, 0)])
def test_dassl_schedule_matches_torch_cosine_stepped_as_dassl_steps_it(lr, epochs, warmup):
    ours = [dassl_warmup_cosine(e, lr, epochs, warmup, 1e-5) for e in range(epochs)]
    assert ours == pytest.approx(_dassl_stepped(lr, epochs, warmup, 1e-5), rel=1e-9, abs=1e-12)


def test_schedule_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="epoch must be"):
        dassl_warmup_cosine(5, 0.002, 5)
    with pytest.raises(ConfigError, match="epochs"):
        dassl_warmup_cosine(0, 0.002, 0)
    with pytest.raises(ConfigError, match="lr"):
        dassl_warmup_cosine(0, 0.0, 5)


def test_steps_per_epoch_drops_the_last_partial_batch_as_dassl_does():
    assert steps_per_epoch(346, 32, drop_last=True) == 10      # Derm7pt's 346 training images: 10 x 32, 26 dropped
    assert steps_per_epoch(346, 32, drop_last=False) == 11
    assert steps_per_epoch(4710, 32) == 147 and steps_per_epoch(64, 32) == 2 and steps_per_epoch(64, 32, False) == 2
    batches = epoch_batches(torch.arange(70), 32)
    assert [b.tolist()[:1] + [len(b)] for b in batches] == [[0, 32], [32, 32]]
    assert [len(b) for b in epoch_batches(torch.arange(70), 32, drop_last=False)] == [32, 32, 6]
    with pytest.raises(ConfigError, match="batch_size=32 exceeds the 10 training images"):
        steps_per_epoch(10, 32)
    with pytest.raises(ConfigError, match="batch_size"):
        steps_per_epoch(10, 0)


# ---- 4. CoOp and KgCoOp as their code builds them -------------------------------------------------------------

def test_kgcoop_term_on_a_pair_by_hand():
    """cos = (1, 1/sqrt 2); 1 - mean = 1 - (1 + 0.70711) / 2 = 0.146447; times w = 8: 1.171573."""
    learnt = torch.tensor([[2.0, 0.0], [0.0, 5.0]])   # lengths do not matter: both sides are normalised
    hand = torch.tensor([[1.0, 0.0], [3.0, 3.0]])
    assert float(V.kgcoop_term(learnt, hand, 8.0)) == pytest.approx(8 * (1 - (1 + 2 ** -0.5) / 2), abs=1e-6)
    assert float(V.kgcoop_term(learnt, hand, 8.0)) == pytest.approx(1.171573, abs=1e-6)
    assert float(V.kgcoop_term(hand, hand, 8.0)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConfigError, match="one shape"):
        V.kgcoop_term(learnt, hand[:1], 8.0)


def test_classifier_regulariser_is_the_kgcoop_term_of_its_features():
    bb = TinyBackbone()
    hand = ["a photo of a normal", "a photo of a pneumonia"]
    model = V.PromptClassifier(bb, [["normal"], ["pneumonia"]], context=4, aggregate="mean", hand_texts=hand,
                               kg_weight=8.0, context_init="a photo of a")
    # initialised from "a photo of a", the learnt prompt is the hand prompt "a photo of a <name>.": the term is 0
    with torch.no_grad():
        assert abs(float(model.regulariser(model.text_features()))) < 1e-5
    with torch.no_grad():
        model.context.vectors.add_(torch.randn(4, bb.text_width, generator=torch.Generator().manual_seed(0)))
    feats = model.text_features()
    cos = F.cosine_similarity(feats, bb.encode_text([h + "." for h in hand]), dim=1)
    assert float(model.regulariser(feats).detach()) > 0.01
    assert torch.allclose(model.regulariser(feats), 8 * (1 - cos.mean()), atol=1e-5)


def test_context_from_a_phrase_is_its_token_embeddings(clip, minilm):
    for bb, ids in ((clip, [320, 1125, 539, 320]), (minilm, [1037, 6302, 1997, 1037])):  # "a photo of a"
        model = V.PromptClassifier(bb, [["normal"], ["pneumonia"]], context=4, aggregate="mean",
                                   context_init="a photo of a")
        table = bb.model.token_embedding.weight if bb is clip else bb.text.bert.embeddings.word_embeddings.weight
        assert torch.equal(model.context.vectors.detach(), table[ids].detach())
        assert model.context.vectors.requires_grad
    with pytest.raises(ConfigError, match="context=16 but context_init 'a photo of a' has 4 tokens"):
        V.PromptClassifier(TinyBackbone(), [["a"], ["b"]], context=16, context_init="a photo of a")
    with pytest.raises(ConfigError, match="non-empty phrase"):
        V.PromptClassifier(TinyBackbone(), [["a"], ["b"]], context=4, context_init=" ")


def test_official_method_settings_as_read():
    s = V.OFFICIAL_METHOD_SETTINGS
    assert (s["vip"]["context"], s["vip"]["context_init"], s["vip"]["aggregate"]) == (4, None, "merge")
    assert (s["coop"]["context"], s["coop"]["context_init"], s["coop"]["lr"], s["coop"]["kg_weight"]) == (4, None, 0.001, 0.0)
    assert (s["kgcoop"]["context"], s["kgcoop"]["context_init"], s["kgcoop"]["kg_weight"]) == (4, "a photo of a", 8.0)
    assert s["kgcoop"]["hand_template"].format(name="pneumonia") == "a photo of a pneumonia."
    bb = TinyBackbone()
    for key, cfg in s.items():  # every entry builds a classifier as it stands
        hand = [cfg["hand_template"].format(name=n) for n in ("normal", "pneumonia")] if cfg["kg_weight"] else None
        model = V.PromptClassifier(bb, [["normal"], ["pneumonia"]], context=cfg["context"], aggregate=cfg["aggregate"],
                                   context_init=cfg["context_init"], hand_texts=hand, kg_weight=cfg["kg_weight"])
        assert model.context.vectors.shape == (cfg["context"], bb.text_width), key


# ---- 5. per-backbone CLIP settings ------------------------------------------------------------------------------

def test_official_clip_settings_name_registered_backbones_of_the_right_size():
    from medad.backbones.clip_openclip import _open_clip

    s = V.OFFICIAL_CLIP_SETTINGS
    assert {k: (v["batch_size"], v["lr"], v["image_size"]) for k, v in s.items()} == {
        "clip-rn50x64": (8, 0.001, 448), "clip-vit-l-14-336-native": (16, 0.002, 336), "clip-vit-b-16": (32, 0.002, 224)}
    open_clip = _open_clip()
    for name, cfg in s.items():
        spec = get_spec(name)
        assert spec.family == "clip" and spec.input_size == cfg["image_size"]
        # the official config asserts INPUT.SIZE equals CLIP's own resolution
        assert open_clip.get_model_config(spec.options["arch"])["vision_cfg"]["image_size"] == cfg["image_size"]
    assert get_spec("clip-vit-l-14-336").input_size == 240  # MVFA's entry is unchanged
    assert get_spec("clip-vit-l-14-336").options["arch"] == get_spec("clip-vit-l-14-336-native").options["arch"]


# ---- Derm7pt: symptom file and loader on the release-layout fixture ------------------------------------------

def test_derm7pt_symptoms_fit_the_loader_on_the_release_fixture(tmp_path):
    from medad.data import open_dataset
    from medad.symptoms import load_symptoms

    root = fx.write(tmp_path / "data", fx.derm_files(), "release_v0.zip")
    sizes = {}
    for split in ("train", "val", "test"):
        ds = open_dataset("derm7pt", split, root)
        assert not ds.synthetic
        sizes[split] = np.bincount(ds.labels, minlength=2).tolist()
    symptoms = load_symptoms("derm7pt", ds.classes)
    assert symptoms.classes == ds.classes == ("nevus", "melanoma")
    assert all(len(t) >= 4 for t in symptoms.per_class())
    assert sizes == {k: list(v) for k, v in fx.DERM_COUNTS.items()}  # melanoma and nevus kept; BCC, SK, lentigo out
