"""The backbone registry and the real-CLIP path (random weights: no CLIP weights exist here)."""
from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from medad.backbones import BackboneWarning, ImageFeatures, Preprocess, WeightsNotFound, backbone_table, get_spec, list_backbones, load_backbone
from medad.errors import ConfigError

SMALL = 64  # image size for the CLIP parity tests: same code path, a fraction of the compute


def _quiet_load(name, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BackboneWarning)
        return load_backbone(name, **kw)


@pytest.fixture(scope="module")
def vit_b16():
    return _quiet_load("clip-vit-b-16", pretrained=None, image_size=SMALL, seed=0)


@pytest.fixture(scope="module")
def rn50():
    return _quiet_load("clip-rn50", pretrained=None, image_size=SMALL, seed=0)


class Adapter(nn.Module):
    """MVFA's adapter shape: Linear -> LeakyReLU -> Linear -> LeakyReLU, mixed back residually."""

    def __init__(self, width, hidden=32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden, bias=False), nn.LeakyReLU(),
                                 nn.Linear(hidden, width, bias=False), nn.LeakyReLU())

    def forward(self, x):
        return 0.8 * x + 0.2 * self.net(x)


# ---- registry -------------------------------------------------------------------------------

def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ConfigError) as err:
        load_backbone("clip-vit-h-14")
    for name in ("clip-vit-l-14-336", "clip-vit-b-16", "clip-rn50", "standin-effnet-lite0-minilm", "resnet50"):
        assert name in str(err.value)


def test_registry_names_and_table():
    names = list_backbones()
    assert {"clip-vit-l-14-336", "clip-vit-b-16", "clip-rn50", "standin-effnet-lite0-minilm",
            "standin-effnet-lite2-minilm", "effnet-lite0", "effnet-lite2", "resnet50", "vgg16"} <= set(names)
    assert set(list_backbones(text=False)) == {"effnet-lite0", "effnet-lite2", "resnet50", "vgg16"}
    table = backbone_table()
    assert [row["name"] for row in table] == names
    for row in table:
        standin = row["name"].startswith("standin-")
        assert row["stand-in"] == standin == get_spec(row["name"]).is_standin
        if standin:
            assert "STAND-IN" in row["weights"] and "not CLIP" in row["description"]


def test_bad_parameters_are_config_errors():
    with pytest.raises(ConfigError, match="seed"):
        load_backbone("effnet-lite0", seed="1")
    with pytest.raises(ConfigError, match="device"):
        load_backbone("effnet-lite0", device="tpu")
    with pytest.raises(ConfigError, match="resize"):
        Preprocess(224, (0.5,) * 3, (0.5,) * 3, resize="stretch")


def test_preprocess_gray_rgb_and_alpha():
    pre = Preprocess(32, (0.5,) * 3, (0.5,) * 3)
    gray = np.full((40, 60), 255, np.uint8)
    rgb = np.zeros((50, 30, 3), np.uint8)
    rgba = np.zeros((20, 20, 4), np.uint8)  # fully transparent -> white
    assert pre(gray).shape == (3, 32, 32) and torch.allclose(pre(gray), torch.ones(3, 32, 32))
    assert torch.allclose(pre(rgb), -torch.ones(3, 32, 32))
    assert torch.allclose(pre(rgba), torch.ones(3, 32, 32))
    with pytest.raises(ConfigError, match="uint8"):
        pre(np.zeros((8, 8), np.float32))


def test_preprocess_matches_open_clips_own_transform():
    from PIL import Image

    from medad.backbones.base import OPENAI_MEAN, OPENAI_STD
    from medad.backbones.clip_openclip import _open_clip

    theirs = _open_clip().image_transform(240, is_train=False)
    ours = Preprocess(240, OPENAI_MEAN, OPENAI_STD)
    rng = np.random.default_rng(0)
    for shape in [(333, 517, 3), (600, 512, 3), (300, 300, 3)]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        assert torch.equal(ours(image), theirs(Image.fromarray(image)))


# ---- offline weights -----------------------------------------------------------------------

def test_offline_missing_weights_fail_fast_and_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without internet
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("MEDAD_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/clip either
    t0 = time.perf_counter()
    with pytest.raises(WeightsNotFound) as err:
        load_backbone("clip-vit-l-14-336")
    elapsed = time.perf_counter() - t0
    assert elapsed < 10, f"took {elapsed:.1f} s: the retry loop was not avoided"  # open_clip's own loop takes ~46 s
    msg = str(err.value)
    assert "pretrained='/path/to/checkpoint'" in msg and "MEDAD_WEIGHTS" in msg and "standin-effnet-lite0-minilm" in msg
    # without the offline flag medad probes the hub itself (1 s timeout): still well inside 2 s
    monkeypatch.delenv("HF_HUB_OFFLINE")
    t0 = time.perf_counter()
    with pytest.raises(WeightsNotFound):
        load_backbone("clip-rn50")
    assert time.perf_counter() - t0 < 2.0


def test_bad_tag_and_missing_file_are_config_errors():
    with pytest.raises(ConfigError, match="openai"):
        load_backbone("clip-rn50", pretrained="no-such-tag")
    with pytest.raises(ConfigError, match="no such checkpoint"):
        load_backbone("clip-rn50", pretrained="/nonexistent/RN50.pt")


# ---- CLIP: exact parity with open_clip, multi-level features ----------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("which", ["vit_b16", "rn50"])
def test_multilevel_forward_equals_open_clip(which, request):
    b = request.getfixturevalue(which)
    torch.manual_seed(1)
    x = torch.randn(2, 3, SMALL, SMALL)
    with torch.no_grad():
        ref = b.model.encode_image(x)
        feats = b.encode_image(x, levels=range(1, len(b.stage_widths) + 1))
    assert isinstance(feats, ImageFeatures)
    assert torch.equal(feats.embedding, ref)
    assert feats.embedding.shape == (2, b.embed_dim)
    for tokens, grid, width in zip(feats.tokens, feats.grids, b.stage_widths):
        assert tokens.shape == (2, grid[0] * grid[1], width)


def test_vit_tower_runs_sequence_first_with_batch_first_numbers(vit_b16):
    """medad runs open_clip's ViT blocks sequence-first (fast on a CPU); a batch-first copy gives the same embedding."""
    import copy

    visual = vit_b16.model.visual
    assert visual.transformer.batch_first is False
    assert all(b.attn.batch_first is False for b in visual.transformer.resblocks)
    batch_first = copy.deepcopy(visual)
    batch_first.transformer.batch_first = True
    for b in batch_first.transformer.resblocks:
        b.attn.batch_first = True
    torch.manual_seed(2)
    x = torch.randn(3, 3, SMALL, SMALL)
    with torch.no_grad():
        ours = vit_b16.encode_image(x).embedding
        theirs = batch_first(x)
    assert not torch.equal(ours, torch.zeros_like(ours))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_clip_widths_and_joint_space_projection(vit_b16, rn50):
    assert (vit_b16.embed_dim, vit_b16.text_width, len(vit_b16.stage_widths)) == (512, 512, 12)
    assert vit_b16.default_levels == (3, 6, 9, 12) and vit_b16.grid(1) == (SMALL // 16,) * 2
    assert (rn50.embed_dim, rn50.stage_widths) == (1024, (256, 512, 1024, 2048))
    x = torch.randn(1, 3, SMALL, SMALL)
    with torch.no_grad():
        fv, fr = vit_b16.encode_image(x), rn50.encode_image(x)
        for t, level in zip(fv.tokens, fv.levels):
            assert vit_b16.project_tokens(t, level).shape == (1, t.shape[1], 512)
        assert rn50.project_tokens(fr.tokens[-1], 4).shape == (1, fr.tokens[-1].shape[1], 1024)
        assert rn50.project_tokens(fr.tokens[0], 1) is None
        # the class token (pooled) path and ln_post/proj on it reproduce the global embedding
        assert torch.allclose(vit_b16.project_tokens(fv.cls[-1][:, None], 12)[:, 0], fv.embedding, atol=1e-5)


@pytest.mark.slow
def test_inserted_modules_flow_on_and_train_while_backbone_is_frozen(vit_b16, rn50):
    for b in (vit_b16, rn50):
        stage = b.default_levels[1]
        adapter = Adapter(b.stage_widths[stage - 1])
        x = torch.randn(1, 3, SMALL, SMALL)
        plain = b.encode_image(x).embedding.detach()
        out = b.encode_image(x, inserts={stage: adapter})
        assert not torch.allclose(out.embedding, plain)  # the adapter's output flowed on into later stages
        out.embedding.sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.parameters())
        assert all(p.grad is None and not p.requires_grad for p in b.parameters())
        assert not b.training and not b.model.training


@pytest.mark.slow
def test_context_vectors_get_gradients_and_zero_context_is_plain_text(vit_b16, rn50):
    texts = ["consolidation in the lower lobe", "normal chest x-ray"]
    for b in (vit_b16, rn50):
        with torch.no_grad():
            plain = b.encode_text(texts)
            assert torch.equal(b.encode_text_with_context(texts, torch.zeros(0, b.text_width)), plain)
        ctx = nn.Parameter(torch.randn(4, b.text_width) * 0.02)  # ViP's CoP: M = 4, N(0, 0.02)
        out = b.encode_text_with_context(texts, ctx, normalize=True)
        assert out.shape == (2, b.embed_dim)
        out.sum().backward()
        assert ctx.grad is not None and ctx.grad.abs().sum() > 0
        assert all(p.grad is None for p in b.parameters())
    with pytest.raises(ConfigError, match="context"):
        vit_b16.encode_text_with_context(texts, torch.zeros(4, 7))


@pytest.mark.slow
def test_text_from_token_embeddings_reproduces_encode_text(vit_b16):
    tokens = vit_b16.tokenize(["a nodule", "ground-glass opacity in the left lung"])
    with torch.no_grad():
        emb = vit_b16.token_embeddings(tokens)
        assert emb.shape == (2, vit_b16.context_length, vit_b16.text_width)
        assert torch.equal(vit_b16.encode_embedded(emb, tokens.mask), vit_b16.encode_text(tokens))
    with pytest.raises(ConfigError, match="embeddings"):
        vit_b16.encode_embedded(emb[:, :10], tokens.mask[:, :10])


@pytest.mark.slow
def test_random_init_is_deterministic_with_a_seed(rn50):
    again = _quiet_load("clip-rn50", pretrained=None, image_size=SMALL, seed=0)
    other = _quiet_load("clip-rn50", pretrained=None, image_size=SMALL, seed=1)
    x = torch.randn(1, 3, SMALL, SMALL)
    with torch.no_grad():
        assert torch.equal(rn50.encode_image(x).embedding, again.encode_image(x).embedding)
        assert not torch.equal(rn50.encode_image(x).embedding, other.encode_image(x).embedding)


def test_random_weights_are_said_loudly():
    with pytest.warns(BackboneWarning, match="RANDOM"):
        b = load_backbone("clip-rn50", pretrained=None, image_size=SMALL)
    assert b.pretrained is False and "random" in b.weights_source


@pytest.mark.slow
def test_local_checkpoint_loads_and_position_embeddings_are_interpolated(rn50, vit_b16, tmp_path):
    path = tmp_path / "rn50.pt"
    torch.save(rn50.model.state_dict(), path)
    loaded = load_backbone("clip-rn50", pretrained=str(path), image_size=SMALL, seed=5)
    assert loaded.pretrained and str(path) in loaded.weights_source
    x = torch.randn(1, 3, SMALL, SMALL)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(x).embedding, rn50.encode_image(x).embedding)
    # ViT weights saved at a 4 x 4 grid, loaded at 96 px (6 x 6): open_clip resizes the position embeddings
    path = tmp_path / "vitb16.pt"
    torch.save(vit_b16.model.state_dict(), path)
    bigger = load_backbone("clip-vit-b-16", pretrained=str(path), image_size=96)
    assert bigger.grid(1) == (6, 6)
    assert bigger.model.visual.positional_embedding.shape == (37, 768)
    with torch.no_grad():
        y = torch.randn(1, 3, 96, 96)
        assert torch.equal(bigger.encode_image(y).embedding, bigger.model.encode_image(y))


def test_vit_l_14_336_at_240_has_a_17x17_grid():
    """MVFA's backbone, built on the meta device: shapes only, no memory or compute."""
    from medad.backbones.clip_openclip import OpenCLIPBackbone, _open_clip

    spec = get_spec("clip-vit-l-14-336")
    model = _open_clip().create_model("ViT-L-14-336", force_image_size=240, force_quick_gelu=True, device="meta")
    b = OpenCLIPBackbone(model, name=spec.name, arch="ViT-L-14-336", image_size=240, levels=(6, 12, 18, 24),
                         weights_source="none (meta)", pretrained=False, description=spec.description)
    assert b.grid(1) == (17, 17) and model.visual.positional_embedding.shape == (17 * 17 + 1, 1024)
    assert (b.embed_dim, b.text_width, b.stage_widths[0], len(b.stage_widths)) == (768, 768, 1024, 24)
    feats = b.encode_image(torch.empty(1, 3, 240, 240, device="meta"))
    assert feats.embedding.shape == (1, 768) and feats.levels == (6, 12, 18, 24)
    assert all(t.shape == (1, 289, 1024) for t in feats.tokens)
    assert b.project_tokens(feats.tokens[0], 6).shape == (1, 289, 768)


# ---- vision-only CNNs ---------------------------------------------------------------------

@pytest.mark.parametrize("name,widths,embed", [
    ("resnet50", (256, 512, 1024, 2048), 2048),
    ("vgg16", (64, 128, 256, 512, 512), 512),
])
def test_torchvision_cnns_without_weights_warn_and_have_stages(name, widths, embed, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDAD_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.warns(BackboneWarning, match="RANDOM"):
        b = load_backbone(name, image_size=SMALL)
    assert b.pretrained is False and "random" in b.weights_source and b.has_text is False
    assert b.stage_widths == widths and b.embed_dim == embed
    with torch.no_grad():
        f = b.encode_image(torch.randn(1, 3, SMALL, SMALL), levels=range(1, len(widths) + 1))
    assert f.embedding.shape == (1, embed)
    assert [t.shape[-1] for t in f.tokens] == list(widths)
    with pytest.raises(ConfigError, match="vision-only"):
        b.encode_text(["a"])


def test_torchvision_weights_from_a_local_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BackboneWarning)
        first = load_backbone("resnet50", pretrained=None, seed=3, image_size=SMALL)
    (tmp_path / "w").mkdir()
    torch.save(first.model.state_dict(), tmp_path / "w" / "resnet50-test.pth")
    monkeypatch.setenv("MEDAD_WEIGHTS", str(tmp_path / "w"))
    found = load_backbone("resnet50", image_size=SMALL)  # pretrained=True looks in $MEDAD_WEIGHTS
    assert found.pretrained and "resnet50-test.pth" in found.weights_source
    x = torch.randn(1, 3, SMALL, SMALL)
    with torch.no_grad():
        assert torch.equal(found.encode_image(x).embedding, first.encode_image(x).embedding)


def test_bad_stage_and_image_input_are_config_errors(rn50):
    with pytest.raises(ConfigError, match="stage"):
        rn50.encode_image(torch.zeros(1, 3, SMALL, SMALL), levels=[5])
    with pytest.raises(ConfigError, match="stage"):
        rn50.insert(0, nn.Identity())
    with pytest.raises(ConfigError, match=r"\(B, 3, H, W\)"):
        rn50.encode_image(torch.zeros(3, SMALL, SMALL))
