"""ViP: the Merge Prompt's equation, the classifier's logits and gradients, its training task on the shared loop
(selection, exact resumption, refusal under other settings, Dassl's schedule, augmented views), the methods as the
official code runs them, the feature cache's key checks, and the one entry point end to end on synthetic data and on
the Derm7pt fixture in the release's layout (a tiny text backbone)."""
from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fixtures as fx
from medad.backbones.base import OPENAI_MEAN, OPENAI_STD, Backbone, ImageFeatures, Preprocess, TextTokens
from medad.errors import ConfigError, DataError
from medad.features_cache import CachedFeatures, CachedViews, image_features, stratified_subset
from medad.models.vip import MergePrompt, PromptClassifier
from medad.symptoms import load_symptoms
from medad.train import vip_experiment as vx
from medad.train import vip_task as vt


class TinyBackbone(Backbone):
    """A few-parameter image-text model with the Backbone interface: hashed words, mean-pooled MLP text encoder."""

    name = "tiny-test"
    has_text = True
    embed_dim = 8
    text_width = 6
    image_size = 16
    stage_widths = (3,)
    weights_source = "random (test)"

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self._preprocess = Preprocess(16, OPENAI_MEAN, OPENAI_STD)
        self.image = nn.Linear(3, 8)
        self.words = nn.Embedding(512, 6)
        self.text = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8))
        self.freeze()

    def encode_image(self, images, levels=None, inserts=None) -> ImageFeatures:
        return ImageFeatures(self.image(self._check_images(images).mean(dim=(2, 3))))

    def tokenize(self, texts) -> TextTokens:
        rows = [[1] + [3 + zlib.crc32(w.encode()) % 500 for w in t.lower().split()] + [2] for t in texts]
        width = max(map(len, rows))
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        return TextTokens(ids, (ids > 0).long())

    def token_embeddings(self, tokens):
        return self.words(tokens.ids)

    def encode_embedded(self, embeddings, mask, normalize=False):
        m = mask.unsqueeze(-1).float()
        out = self.text((embeddings * m).sum(1) / m.sum(1))
        return F.normalize(out, dim=-1) if normalize else out

    def encode_text(self, texts, normalize=False):
        tokens = texts if isinstance(texts, TextTokens) else self.tokenize(texts)
        return self.encode_embedded(self.token_embeddings(tokens), tokens.mask, normalize)

    def encode_text_with_context(self, texts, context, normalize=False):
        tokens = texts if isinstance(texts, TextTokens) else self.tokenize(texts)
        ctx = self._context_batch(context, len(tokens))
        emb = self.token_embeddings(tokens)
        x = torch.cat([emb[:, :1], ctx, emb[:, 1:]], 1)
        mask = torch.cat([tokens.mask[:, :1], tokens.mask.new_ones(len(tokens), ctx.shape[1]), tokens.mask[:, 1:]], 1)
        return self.encode_embedded(x, mask, normalize)


SYMPTOMS = [["clear dark lungs", "sharp angles"], ["white patch", "air bronchogram", "hazy cloud"]]


def test_merge_prompt_is_the_papers_equation():
    torch.manual_seed(0)
    mep = MergePrompt(2, 5)
    t = [torch.randn(3, 5), torch.randn(4, 5)]
    reps, weights = mep(t)
    for c in range(2):
        g = mep.tokens[c]
        q, k = g @ mep.q.weight.T, t[c] @ mep.k.weight.T   # bias-free projections
        a = torch.softmax(q @ k.T / 5 ** 0.5, dim=0)
        assert torch.allclose(reps[c], g + a @ t[c], atol=1e-6)
        assert torch.allclose(weights[c], a, atol=1e-6) and abs(float(weights[c].sum().detach()) - 1) < 1e-6
    assert mep.q.bias is None and mep.k.bias is None
    assert 0.005 < float(mep.tokens.detach().std()) < 0.05  # N(0, 0.02^2)


def test_logits_are_scaled_cosines_and_only_prompts_learn():
    bb = TinyBackbone()
    model = PromptClassifier(bb, SYMPTOMS, context=4, aggregate="merge")
    assert tuple(model.context.vectors.shape) == (4, bb.text_width)
    f = torch.randn(5, 8)
    reps, _ = model.class_representations()
    expected = 100.0 * F.normalize(f, dim=-1) @ F.normalize(reps, dim=-1).T
    assert torch.allclose(model(f), expected, atol=1e-4)
    model.loss(f, torch.tensor([0, 1, 0, 1, 1])).backward()
    learnt = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert learnt == {"context.vectors", "merge.tokens", "merge.q.weight", "merge.k.weight"}
    assert all(p.grad is None for p in bb.parameters())
    assert not any(n.startswith("_backbone") for n, _ in model.state_dict().items())


def test_max_and_mean_aggregation():
    bb = TinyBackbone()
    f = torch.randn(4, 8)
    feats = bb.encode_text([s + "." for t in SYMPTOMS for s in t])  # every prompt ends with a period
    sims = F.normalize(f, dim=-1) @ F.normalize(feats, dim=-1).T
    top = PromptClassifier(bb, SYMPTOMS, context=0, aggregate="max")(f)
    assert torch.allclose(top, 100 * torch.stack([sims[:, :2].max(1).values, sims[:, 2:].max(1).values], 1), atol=1e-4)
    mean = PromptClassifier(bb, SYMPTOMS, context=0, aggregate="mean")
    reps = torch.stack([F.normalize(feats[:2], dim=-1).mean(0), F.normalize(feats[2:], dim=-1).mean(0)])
    assert torch.allclose(mean(f), 100 * F.normalize(f, dim=-1) @ F.normalize(reps, dim=-1).T, atol=1e-4)
    assert mean.trainable() == []
    with pytest.raises(ConfigError, match="aggregate"):
        PromptClassifier(bb, SYMPTOMS, aggregate="sum")
    with pytest.raises(ConfigError, match="at least one text"):
        PromptClassifier(bb, [["a"], []])


def test_kgcoop_regulariser_pulls_towards_hand_prompts():
    bb = TinyBackbone()
    hand = ["an image of normal", "an image of pneumonia"]
    model = PromptClassifier(bb, [["normal"], ["pneumonia"]], context=4, aggregate="mean", hand_texts=hand, kg_weight=8.0)
    feats = model.text_features()
    reg = model.regulariser(feats)
    hand_feats = bb.encode_text([h + "." for h in hand])
    direct = 8 * (1 - F.cosine_similarity(feats, hand_feats, dim=1).mean())  # KgCoOp's w * (1 - mean cos)
    assert torch.allclose(reg, direct, atol=1e-5) and reg > 0
    with pytest.raises(ConfigError, match="hand-written"):
        PromptClassifier(bb, [["a"], ["b"]], kg_weight=1.0)


def _separable(n: int, seed: int) -> CachedFeatures:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 8)) + 2.5 * np.where(y[:, None] == 1, 1.0, -1.0) * np.eye(8)[0]
    return CachedFeatures(torch.tensor(x, dtype=torch.float32), y, [f"i{i}" for i in range(n)], {})


def _views_of(feats: CachedFeatures, n_views: int = 3, seed: int = 0) -> CachedViews:
    noise = torch.randn(len(feats), n_views, feats.features.shape[1], generator=torch.Generator().manual_seed(seed))
    return CachedViews(feats.features[:, None] + 0.3 * noise, feats.labels, feats.ids, {})


def _model(seed: int = 7, **kw) -> PromptClassifier:
    torch.manual_seed(seed)
    return PromptClassifier(TinyBackbone(), SYMPTOMS, context=4, aggregate="merge", **kw)


def test_training_learns_and_keeps_the_best_validation_epoch():
    train, val = _separable(128, 1), _separable(64, 2)
    settings = vt.TrainSettings(epochs=6, batch_size=32, lr=0.5, seed=7)
    model = _model()  # an init that starts below 0.8
    before = vt.evaluate(model, val.features, val.labels)["accuracy"]
    fit = vt.train_method(model, train, val, settings, progress=False)
    history = [v["val_accuracy"] for v in fit.validations]
    assert len(history) == 6 and fit.steps == 6 * 4 and fit.best["val_accuracy"]["value"] == max(history)
    assert max(history) > max(before, 0.8)
    best_epoch = history.index(max(history))  # the earliest among ties
    assert fit.best_step == 4 * (best_epoch + 1)
    assert vt.evaluate(model, val.features, val.labels)["accuracy"] == max(history)  # the best epoch's weights


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_resumed_run_equals_the_uninterrupted_one_and_other_settings_are_refused(tmp_path, precision):
    train, val = _views_of(_separable(100, 1)), _separable(40, 2)
    settings = vt.TrainSettings(epochs=5, batch_size=32, lr=0.5, seed=3, precision=precision)
    whole = _model()
    ref = vt.train_method(whole, train, val, settings, progress=False)
    calls = []
    real = vt.PromptTask.validate

    def stop_at_third_epoch(self):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vt.PromptTask, "validate", stop_at_third_epoch)
        with pytest.raises(KeyboardInterrupt):
            vt.train_method(_model(), train, val, settings, tmp_path / "last.pt", progress=False)
    assert torch.load(tmp_path / "last.pt", weights_only=False)["state"]["step"] == 2 * 3  # after epoch 2
    resumed_model = _model(seed=99)  # another init: everything must come from the checkpoint
    resumed = vt.train_method(resumed_model, train, val, settings, tmp_path / "last.pt", progress=False)
    assert [v["val_accuracy"] for v in resumed.validations] == [v["val_accuracy"] for v in ref.validations]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in ref.history]
    for (k, v), w in zip(whole.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(v, w), k
    with pytest.raises(ConfigError, match=r"other settings.*schedule\.lr: 0\.5 -> 0\.25.*--fresh"):
        vt.train_method(_model(), train, val, vt.TrainSettings(**{**settings.__dict__, "lr": 0.25}), tmp_path / "last.pt",
                        progress=False)
    with pytest.raises(ConfigError, match=r"views: 3 -> 2"):
        vt.train_method(_model(), _views_of(_separable(100, 1), n_views=2), val, settings, tmp_path / "last.pt",
                        progress=False)


def test_the_task_follows_dassls_schedule_and_drops_the_last_partial_batch():
    from medad.experiment.schedules import dassl_warmup_cosine

    train, val = _separable(70, 1), _separable(20, 2)
    task = vt.PromptTask(_model(), train, val, vt.TrainSettings(epochs=5, batch_size=32, lr=0.002))
    assert task.steps_per_epoch() == 2  # 70 images: two batches of 32, the last 6 dropped
    batches = task.epoch_batches(0, np.random.default_rng(0))
    assert [len(b) for b in batches] == [32, 32] and len(set(np.concatenate(batches).tolist())) == 64
    lrs = [task.lr(step, 10) for step in range(10)]
    expected = [1e-5, 0.002] + [0.001 * (1 + math.cos(math.pi * k / 5)) for k in (1, 2, 3)]
    assert lrs == pytest.approx([e for e in expected for _ in range(2)], rel=1e-12)
    assert lrs == [dassl_warmup_cosine(s // 2, 0.002, 5) for s in range(10)]
    with pytest.raises(ConfigError, match="batch_size=32 exceeds the 20 training images"):
        vt.PromptTask(_model(), _separable(20, 1), val, vt.TrainSettings(batch_size=32))


def test_each_step_shows_one_cached_view_of_every_image():
    train, val = _views_of(_separable(64, 1), n_views=4), _separable(20, 2)
    task = vt.PromptTask(_model(), train, val, vt.TrainSettings(batch_size=32))
    seen = []
    task.model.loss_terms = lambda f, y: seen.append(f) or {"loss": f.sum()}
    batch = task.epoch_batches(0, np.random.default_rng(0))[0]
    for _ in range(3):
        task.loss(batch, None)
    views = train.features[torch.as_tensor(batch)]  # (32, 4, D)
    picks = [[int(torch.nonzero((views[i] == f[i]).all(-1))[0]) for i in range(32)] for f in seen]
    assert all(len(p) == 32 for p in picks) and len({tuple(p) for p in picks}) == 3  # new draws each step
    assert set(sum(picks, [])) == {0, 1, 2, 3}
    assert set(task.generators()) == {"views"}


def test_methods_are_built_as_the_official_code_runs_them():
    from medad.models.vip import OFFICIAL_METHOD_SETTINGS

    bb, sym = TinyBackbone(), load_symptoms("chest_xray")
    coop = vt.build_classifier(vt.METHODS["coop"], bb, sym, "chest X-ray")
    assert coop.context.vectors.shape[0] == 4 and coop.prompts == ["normal chest.", "pneumonia."] and coop.kg_weight == 0
    kg = vt.build_classifier(vt.METHODS["kgcoop"], bb, sym, "chest X-ray")
    phrase = bb.token_embeddings(bb.tokenize(["a photo of a"]))[0, 1:5]
    assert torch.equal(kg.context.vectors.detach(), phrase.detach()) and kg.kg_weight == 8.0
    hand = F.normalize(bb.encode_text(["a photo of a normal chest.", "a photo of a pneumonia."]), dim=-1)
    assert torch.allclose(kg._hand, hand, atol=1e-6)
    vip = vt.build_classifier(vt.METHODS["vip"], bb, sym, "chest X-ray", n_ctx=6)
    assert vip.context.vectors.shape[0] == 6 and vip.aggregate == "merge" and vip.texts == sym.per_class()
    mep = vt.build_classifier(vt.METHODS["mep"], bb, sym, "chest X-ray")
    assert mep.context is None and mep.merge is not None
    antonym = vt.build_classifier(vt.METHODS["vip_antonym"], bb, sym, "chest X-ray")
    assert antonym.texts[1] == sym.ablations["antonym"] and antonym.texts[0] == sym.symptoms["NORMAL"]
    zs = vt.build_classifier(vt.METHODS["zs_names"], bb, sym, "chest X-ray")
    assert zs.prompts == ["a chest X-ray image of normal chest.", "a chest X-ray image of pneumonia."] and zs.trainable() == []
    cfg = {"lr": 0.005, "batch_size": 24, "official_clip_settings": True, "batch_cap": None}
    assert vt.lr_for(vt.METHODS["coop"], "standin-effnet-lite0-minilm", cfg) == OFFICIAL_METHOD_SETTINGS["coop"]["lr"] == 0.001
    assert vt.lr_for(vt.METHODS["vip"], "standin-effnet-lite0-minilm", cfg) == 0.005
    assert (vt.lr_for(vt.METHODS["vip"], "clip-rn50x64", cfg), vt.batch_size_for("clip-rn50x64", cfg)) == (0.001, 8)
    assert (vt.lr_for(vt.METHODS["kgcoop"], "clip-vit-l-14-336-native", cfg), vt.batch_size_for("clip-vit-l-14-336-native", cfg)) == (0.002, 16)
    assert vt.batch_size_for("standin-effnet-lite0-minilm", cfg) == 24
    own = {**cfg, "official_clip_settings": False}
    assert (vt.lr_for(vt.METHODS["vip"], "clip-rn50x64", own), vt.batch_size_for("clip-rn50x64", own)) == (0.005, 24)
    assert set(vt.methods_for(["main"])) == {"zs_names", "zs_symptoms", "linear_probe", "coop", "kgcoop", "vip"}


def _cfg(**over):
    from medad.params import Config

    cfg = {"datasets": ["chest_xray"], "backbones": ["tiny-test"], "settings": ["main", "augmentation", "ablation"],
           "seeds": [1, 2], "ablation_seeds": [1], "train_images": None, "val_images": None, "test_images": None,
           "epochs": 2, "batch_size": 16, "lr": 0.002, "warmup_epochs": 1, "warmup_lr": 1e-5, "momentum": 0.9,
           "weight_decay": 5e-4, "n_ctx": 4, "n_boot": 50, "views": 2, "view_seed": 0, "precision": "fp32",
           "channels_last": False, "official_clip_settings": True, "weights": None, "limits": None, "batch_cap": None,
           "symptom_files": {}, "device": "cpu", "seed": 0, "threads": 1, "long_run": None}
    cfg.update(over)
    return Config(cfg)


def test_plan_runs_settings_in_order_seed_by_seed_and_deterministic_methods_once():
    cfg = _cfg(datasets=["chest_xray", "brain_mri"], backbones=["a", "b"], seeds=[1, 2], ablation_seeds=[1, 2],
               settings=["main", "knowledge", "ablation"], limits={"b": {"datasets": ["chest_xray"], "settings": ["main"]}})
    keys = [u.key for u in vx.plan(cfg)]
    assert len(keys) == len(set(keys))
    assert keys[:6] == [f"chest_xray/a/{k}/seed1" for k in ("zs_names", "zs_symptoms", "linear_probe", "coop", "kgcoop", "vip")]
    assert keys[6:12] == [f"brain_mri/a/{k}/seed1" for k in ("zs_names", "zs_symptoms", "linear_probe", "coop", "kgcoop", "vip")]
    assert keys[12:18] == [f"{d}/a/{k}/seed2" for d in ("chest_xray", "brain_mri") for k in ("coop", "kgcoop", "vip")]
    knowledge = ("vip_out_of_domain", "vip_non_diagnostic", "vip_antonym")  # then each seed of the other settings
    assert keys[18:23] == [f"chest_xray/a/{k}/seed1" for k in knowledge + ("cop", "mep")]
    assert keys[23:28] == [f"brain_mri/a/{k}/seed1" for k in knowledge + ("cop", "mep")]
    assert keys[28:33] == [f"chest_xray/a/{k}/seed2" for k in knowledge + ("cop", "mep")]
    assert [k for k in keys if "/a/zs_symptoms" in k] == ["chest_xray/a/zs_symptoms/seed1", "brain_mri/a/zs_symptoms/seed1"]
    assert {k.split("/")[0] for k in keys if k.split("/")[1] == "b"} == {"chest_xray"}
    assert not [k for k in keys if k.startswith("chest_xray/b/cop")]
    with pytest.raises(ConfigError, match="limits.c"):
        vx.plan({**cfg, "limits": {"c": {}}})
    with pytest.raises(ConfigError, match="needs views >= 1"):
        vx.plan({**cfg, "settings": ["augmentation"], "views": 0, "limits": None})


def _record(tmp_path, name="tiny-run", profile="long_cpu", data_dir=None, **over):
    from medad.experiment.record import RunRecord

    return RunRecord("vip", profile, name, data_dir=data_dir, resolved=_cfg(**over), state_root=tmp_path / "state",
                     results_root=tmp_path / "results", code_files=vx.CODE_FILES)


def test_one_entry_point_writes_a_committed_run_resumes_and_refuses_to_overwrite_another(tmp_path, monkeypatch):
    import pandas as pd

    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))
    rec = _record(tmp_path)
    out = vx.run_experiment(rec.config, rec.opener, rec.state, "cpu", progress=False, log=lambda *_: None,
                            backbones={"tiny-test": TinyBackbone()})
    assert out["finished"] == out["planned"] == 3 + 2 * 3 + 1 + 2  # zs x2 + probe, 3 trained x 2 seeds, centre crop, cop, mep
    folder = vx.write_committed(rec, out)
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["kind"] == "smoke" and prov["run_id"] == rec.run_id and prov["precision"] == "float32"
    assert prov["training_seeds"] == {"main": [1, 2], "other settings": [1]}
    assert {d["split"]: d["n_used"] for d in prov["data"]} == {"train": 64, "val": 64, "test": 64}
    assert "2 epochs over every training image" in prov["schedule"] and "2 cached augmented views" in prov["schedule"]
    table = pd.read_csv(folder / "table.csv")
    assert set(table.setting) == {"main", "augmentation", "ablation"} and table.value.between(0, 1).all()
    assert ((table.ci_low <= table.value) & (table.value <= table.ci_high)).all()
    assert table.ci_low.ge(0).all() and table.ci_high.le(1).all()  # a bootstrap over images stays in range
    vip = table[(table.setting == "main") & table.method.str.startswith("ViP (CoP + MeP)")]
    assert (vip.seeds == 2).all() and vip.seed_sd.notna().all()
    assert (table[table.setting == "ablation"].query("method.str.startswith('+ CoP')", engine="python").seeds == 1).all()
    with np.load(folder / "predictions.npz") as z:
        assert len(z["chest_xray/labels"]) == 64 and "chest_xray/tiny-test/vip/seed2" in z.files
    attention = pd.read_csv(folder / "attention.csv")
    assert set(attention.seed) == {1, 2} and np.allclose(attention.groupby(["seed", "class"]).weight.sum(), 1, atol=1e-4)
    # the same name resumes: nothing is trained again and the rows are equal
    again = _record(tmp_path)
    assert again.run_id == rec.run_id
    trained = []
    monkeypatch.setattr(vx, "train_method", lambda *a, **k: trained.append(1))
    rerun = vx.run_experiment(again.config, again.opener, again.state, "cpu", progress=False, log=lambda *_: None,
                              backbones={"tiny-test": TinyBackbone()})
    assert not trained and rerun["rows"] == out["rows"]
    # ... but not under other settings, and another run never writes into this run's folder
    with pytest.raises(ConfigError, match=r"other settings.*epochs: 2 -> 3"):
        _record(tmp_path, epochs=3)
    import shutil
    shutil.rmtree(tmp_path / "state")
    with pytest.raises(ConfigError, match="already holds another run's results"):
        _record(tmp_path)


def test_finished_only_tabulates_what_finished_and_says_partial(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))
    rec = _record(tmp_path, settings=["main"])
    vx.run_experiment(rec.config, rec.opener, rec.state, "cpu", progress=False, log=lambda *_: None,
                      backbones={"tiny-test": TinyBackbone()})
    units = json.loads((rec.state.folder / "units.json").read_text())
    del units["chest_xray/tiny-test/vip/seed2"]  # as if cut short before it
    (rec.state.folder / "units.json").write_text(json.dumps(units))
    again = _record(tmp_path, settings=["main"])
    monkeypatch.setattr(vx, "load_backbone_for", lambda *a: pytest.fail("finished_only loads no backbone"))
    out = vx.run_experiment(again.config, again.opener, again.state, "cpu", progress=False, finished_only=True)
    assert (out["finished"], out["planned"]) == (8, 9)
    vip = [r for r in out["rows"] if r["method"].startswith("ViP")]
    assert {r["seeds"] for r in vip} == {1}
    assert vx.schedule_text(again.config, out, 1).endswith("PARTIAL: 8 of 9 units finished")
    empty = _record(tmp_path / "other", name="empty", settings=["main"])
    nothing = vx.run_experiment(empty.config, empty.opener, empty.state, "cpu", progress=False, finished_only=True)
    with pytest.raises(ConfigError, match="no unit has finished yet"):
        vx.write_committed(empty, nothing)


def test_derm7pt_runs_end_to_end_with_only_its_release(tmp_path, monkeypatch):
    """With only release_v0.zip in the data folder, Derm7pt runs and the provenance records the subsets used."""
    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))
    root = fx.write(tmp_path / "data", fx.derm_files(), "release_v0.zip")
    assert [p.name for p in root.iterdir()] == ["release_v0.zip"]
    rec = _record(tmp_path, data_dir=root, datasets=["derm7pt"], settings=["main"], seeds=[1], batch_size=2,
                  test_images=2)
    out = vx.run_experiment(rec.config, rec.opener, rec.state, "cpu", progress=False, log=lambda *_: None,
                            backbones={"tiny-test": TinyBackbone()})
    assert {r["dataset"] for r in out["rows"]} == {"derm7pt"} and len(out["rows"]) == 12
    prov = json.loads((vx.write_committed(rec, out) / "provenance.json").read_text())
    assert prov["kind"] == "long-cpu" and {d["dataset"] for d in prov["data"]} == {"derm7pt"}
    used = {d["split"]: (d["n"], d["n_used"], d["subset"]) for d in prov["data"]}
    assert used["train"] == (4, 4, "all") and used["test"] == (4, 2, "stratified subset of 2 (seed 0)")
    assert "derm7pt 4" in prov["schedule"]


def test_the_command_line_runs_the_quick_profile_and_tabulates_a_full_run_cut_short(tmp_path, monkeypatch, capsys):
    import medad.paths

    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(medad.paths, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(vx, "load_backbone_for", lambda name, cfg, device="cpu": TinyBackbone())
    assert vx.main(["--profile", "quick", "--name", "q", "--checkpoints", str(tmp_path / "state"),
                    "--datasets", "chest_xray"]) == 0
    prov = json.loads((tmp_path / "results" / "vip" / "q" / "provenance.json").read_text())
    assert prov["kind"] == "smoke" and prov["parameters"]["datasets"] == ["chest_xray"] and prov["profile"] == "quick"
    # a full run that has finished nothing: one clear line, no KeyError
    assert vx.main(["--profile", "full", "--finished-only", "--name", "f", "--checkpoints", str(tmp_path / "state")]) == 2
    assert "no unit has finished yet" in capsys.readouterr().err
    assert vx.main(["--profile", "quick", "--name", "q2", "--datasets", "lidc"]) == 2
    assert "datasets" in capsys.readouterr().err


def test_profiles_full_rehearse_and_schema_choices():
    from medad import profiles
    from medad.backbones import get_spec
    from medad.models.vip import OFFICIAL_CLIP_SETTINGS

    full, rehearse = profiles.resolve_named("vip", "full"), profiles.resolve_named("vip", "rehearse")
    counts = {"epochs", "seeds", "ablation_seeds", "train_images", "val_images", "test_images", "views", "n_boot",
              "batch_cap", "threads", "device"}
    differ = {k for k in full if full[k] != rehearse[k]} - {"profile"}
    assert differ <= counts | {"weights", "datasets", "settings"} and rehearse["weights"] == "random"
    for key in ("datasets", "settings"):  # a list keeps its first items
        assert rehearse[key] == full[key][:len(rehearse[key])]
    assert rehearse["backbones"] == full["backbones"]  # every CLIP backbone, at its real size
    assert rehearse["epochs"] <= 2 and len(rehearse["seeds"]) == 1 and rehearse["test_images"] <= 8
    assert set(full["backbones"]) == set(OFFICIAL_CLIP_SETTINGS)  # ViP's three CLIP backbones at their sizes
    assert all(get_spec(b).input_size == OFFICIAL_CLIP_SETTINGS[b]["image_size"] for b in full["backbones"])
    assert all(vt.batch_size_for(b, rehearse) == 2 and vt.batch_size_for(b, full) == OFFICIAL_CLIP_SETTINGS[b]["batch_size"]
               for b in full["backbones"])
    assert rehearse["train_images"] >= rehearse["batch_cap"]
    quick = profiles.resolve_named("vip", "quick")
    assert quick["warmup_epochs"] == 1 and quick["n_ctx"] == 4 and quick["views"] == 0  # schema defaults
    with pytest.raises(ConfigError, match="backbones"):
        profiles.resolve("vip", "quick", backbones=["effnet-lite0"])  # no text encoder: not a choice
    with pytest.raises(ConfigError, match="settings"):
        profiles.resolve("vip", "quick", settings=["table9"])


def test_feature_cache_hits_and_refuses_a_foreign_file(tmp_path):
    from medad.data import open_dataset

    bb = TinyBackbone()
    ds = open_dataset("chest_xray", "val", synthetic=True, n=10)
    first = image_features(bb, ds, root=tmp_path, progress=False, batch_size=4, save_every=4)
    assert first.features.shape == (10, 8) and first.path.is_file()
    assert not list(tmp_path.rglob("*.partial"))
    again = image_features(bb, ds, root=tmp_path, progress=False)
    assert torch.equal(again.features, first.features)
    with torch.no_grad():
        direct = bb.encode_image(bb.preprocess_batch([s.image for s in ds])).embedding
    assert torch.allclose(first.features, direct, atol=1e-5)
    other = TinyBackbone(seed=1)
    other.weights_source = "another checkpoint"
    with pytest.raises(DataError, match=r"chest_xray-synthetic-val-all\.pt.*weights: file has 'random \(test\)'"):
        image_features(other, ds, root=tmp_path, progress=False)
    newer = open_dataset("chest_xray", "val", synthetic=True, n=10, seed=5)  # another "archive version"
    with pytest.raises(DataError, match="archive_checksum"):
        image_features(bb, newer, root=tmp_path, progress=False)
    assert image_features(bb, newer, root=tmp_path, progress=False, refresh=True).key["archive_checksum"] == newer.checksum
    first.path.write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="not a readable feature cache"):
        image_features(bb, newer, root=tmp_path, progress=False)


def test_stratified_subset_keeps_proportions():
    labels = np.array([0] * 30 + [1] * 70)
    idx = stratified_subset(labels, 20, 0)
    assert len(idx) == 20 and (labels[idx] == 1).sum() == 14 and np.all(np.diff(idx) > 0)
    assert np.array_equal(stratified_subset(labels, None), np.arange(100))


def test_report_tables_show_each_backbone_and_the_reported_numbers():
    from medad.reports import vip as report
    from medad.results import load_reported, row

    rows = [row("chest_xray", "main", "ViP (CoP + MeP) [a]", "accuracy", 0.8, 0.7, 0.9, 3, 624),
            row("chest_xray", "main", "ViP (CoP + MeP) [b]", "accuracy", 0.6, 0.5, 0.7, 3, 624),
            row("chest_xray", "main", "ViP (CoP + MeP) [mean of 2 backbones]", "accuracy", 0.7, seeds=3, n=624),
            row("chest_xray", "ablation", "+ CoP (mean over symptoms) [a]", "accuracy", 0.75, seeds=1, n=624)]
    table = report.setting_table(rows, "main")
    assert table.shape == (3, 2) and table.iloc[0, 1] == "80.0 (70.0–90.0)" and table.iloc[2, 1] == "70.0"
    assert table.iloc[0, 0] == "ViP (CoP + MeP) [a]"  # the method is a column: no pandas index on the page
    comparison = report.reported_comparison(rows, load_reported("vip"))
    chest = comparison[(comparison.dataset.str.startswith("chest")) & (comparison.metric == "accuracy")].iloc[0]
    assert chest["here: a"] == "80.0 (70.0–90.0)" and chest["reported (3 CLIP backbones)"] == "86.7"
    assert (comparison.dataset == "Derm7pt").sum() == 2  # reported, not run here
    assert report.value(rows, "chest_xray", "ablation", "+ CoP") == 0.75 and np.isnan(report.value(rows, "x", "main", "y"))


@pytest.mark.slow
def test_vip_on_random_weight_clip(tmp_path):
    """Real CLIP through open_clip, RANDOM weights (none exist offline): the same code path end to end."""
    import warnings

    from medad.backbones import BackboneWarning, load_backbone
    from medad.data import open_dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BackboneWarning)
        clip = load_backbone("clip-vit-b-16", pretrained=None, image_size=64, seed=0)
    ds = open_dataset("chest_xray", "val", synthetic=True, n=6)
    feats = image_features(clip, ds, root=tmp_path, progress=False)
    assert feats.features.shape == (6, clip.embed_dim)
    model = PromptClassifier(clip, load_symptoms("chest_xray").per_class(), context=4, aggregate="merge")
    assert model.context.vectors.shape == (4, clip.text_width)
    model.loss(feats.features, torch.as_tensor(feats.labels)).backward()
    assert model.context.vectors.grad.abs().sum() > 0 and model.merge.q.weight.grad.abs().sum() > 0
    assert model.predict_logits(feats.features).shape == (6, 2)


def test_report_says_not_run_and_compares_an_older_run_by_method():
    from medad.reports import vip as report
    from medad.results import row

    new = [row("chest_xray", "main", "CoOp (4 context + class name) [a]", "accuracy", 0.7, 0.6, 0.8, 3, 624, 0.01),
           row("chest_xray", "main", "ViP (CoP + MeP) [a]", "accuracy", 0.8, 0.7, 0.9, 3, 624, 0.02),
           row("chest_xray", "main", "ViP (CoP + MeP) [mean of 2 backbones]", "accuracy", 0.5, seeds=3, n=624)]
    old = [row("chest_xray", "main", "CoOp (16 context + class name) [a]", "accuracy", 0.6, seeds=3, n=624, seed_sd=0.05),
           row("brain_mri", "main", "ViP (CoP + MeP) [a]", "accuracy", 0.75, seeds=3, n=1311)]
    table = report.compare_runs({"new": new, "old": old})
    assert table.to_dict("records") == [
        {"dataset": "chest X-ray (Pneumonia)", "method": "CoOp", "new": "70.0 (60.0–80.0) s.d. 1.0", "old": "60.0 s.d. 5.0"},
        {"dataset": "chest X-ray (Pneumonia)", "method": "ViP", "new": "80.0 (70.0–90.0) s.d. 2.0", "old": "not run"},
        {"dataset": "brain MRI (4 classes)", "method": "ViP", "new": "not run", "old": "75.0"}]
    assert report.percent(0.8123) == "81.2 %" and report.percent(float("nan")) == "not run"
    assert report.percent(-0.0144, signed=True) == "-1.4 points"
    older = {"data": [{"dataset": "chest_xray", "split": "train", "n": 4683}], "config": {"train_images": 600}}
    newer = {"data": [{"dataset": "chest_xray", "split": "train", "n": 4683, "n_used": 4683}]}
    assert report.split_sizes(older, "chest_xray") == {"train": 600} and report.split_sizes(newer, "chest_xray") == {"train": 4683}
    assert report.split_sizes(newer, "derm7pt") == {} and report.count_text(None) == "not run"
    knowledge = [row(d, "knowledge", m, "accuracy", v) for d in ("chest_xray", "brain_mri") for m, v in
                 (("ViP (CoP + MeP) [a]", 0.80), ("ViP, symptoms replaced: out-of-domain [a]", 0.79),
                  ("ViP, symptoms replaced: antonym-swapped [a]", 0.795))]
    assert report.knowledge_finding(knowledge)["verdict"] == "learnt class tokens"
    knowledge[1] = row("chest_xray", "knowledge", "ViP, symptoms replaced: out-of-domain [a]", "accuracy", 0.70)
    assert report.knowledge_finding(knowledge)["verdict"] == "symptom knowledge"  # mean cost 5 points on chest X-rays
    assert report.knowledge_finding(new)["verdict"] is None
