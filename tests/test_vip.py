"""ViP: the Merge Prompt's equation, the classifier's logits and gradients, training with resume, the feature
cache's key checks, and the experiment end to end on synthetic data and Derm7pt fixtures (a tiny text backbone)."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fixtures as fx
from medad.backbones.base import OPENAI_MEAN, OPENAI_STD, Backbone, ImageFeatures, Preprocess, TextTokens
from medad.errors import ConfigError, DataError
from medad.features_cache import CachedFeatures, image_features, stratified_subset
from medad.models.vip import MergePrompt, PromptClassifier
from medad.symptoms import load_symptoms
from medad.train import vip_experiment as vx


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


def test_training_learns_selects_on_val_and_resumes(tmp_path):
    bb = TinyBackbone()
    train, val = _separable(128, 1), _separable(64, 2)
    settings = vx.TrainSettings(epochs=6, batch_size=32, lr=0.5, warmup_epochs=1)
    torch.manual_seed(7)  # an init that starts below 0.8 (prompts end with a period since issue 21)
    model = PromptClassifier(bb, SYMPTOMS, context=4, aggregate="merge")
    before = vx.evaluate(model, val.features, val.labels)["accuracy"]
    out = vx.train_prompts(model, train, val, settings, seed=7, progress=False)
    assert len(out["history"]) == 6 and out["best_val"] == max(out["history"])
    assert out["best_val"] > max(before, 0.8)
    assert vx.evaluate(model, val.features, val.labels)["accuracy"] == out["best_val"]  # the best epoch's state
    # interrupted after 3 epochs, resumed from the checkpoint: the same history and state as the uninterrupted run
    ckpt, calls, real_evaluate = tmp_path / "ckpt.pt", [], vx.evaluate

    def stop_at_fourth(*args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_evaluate(*args)

    torch.manual_seed(7)
    first = PromptClassifier(bb, SYMPTOMS, context=4, aggregate="merge")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vx, "evaluate", stop_at_fourth)
        with pytest.raises(KeyboardInterrupt):
            vx.train_prompts(first, train, val, settings, 7, ckpt, False)
    assert torch.load(ckpt, weights_only=False)["state"]["epoch"] == 3
    torch.manual_seed(99)  # another init: everything must come from the checkpoint
    resumed = PromptClassifier(bb, SYMPTOMS, context=4, aggregate="merge")
    res = vx.train_prompts(resumed, train, val, settings, 7, ckpt, False)
    assert res["history"] == out["history"]
    for (k, v), w in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(v, w, atol=1e-6), k


def test_lr_schedule_is_warmup_then_cosine():
    s = vx.TrainSettings(epochs=10, lr=0.002, warmup_epochs=1, warmup_lr=1e-5)
    assert s.lr_at(0) == 1e-5
    assert s.lr_at(1) == pytest.approx(0.5 * 0.002 * (1 + np.cos(np.pi / 10)))
    assert s.lr_at(9) < s.lr_at(5) < s.lr_at(1) <= 0.002


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
    idx = stratified_subset(labels, 20, seed=0)
    assert len(idx) == 20 and (labels[idx] == 1).sum() == 14 and np.all(np.diff(idx) > 0)
    assert np.array_equal(stratified_subset(labels, None), np.arange(100))


def _cfg(**over) -> dict:
    cfg = {"datasets": ["chest_xray"], "backbones": [TinyBackbone()], "settings": ["main", "ablation", "aggregation", "knowledge"],
           "seeds": [1, 2], "train_images": None, "val_images": None, "test_images": None, "epochs": 2, "batch_size": 16,
           "lr": 0.002, "warmup_epochs": 1, "warmup_lr": 1e-5, "momentum": 0.9, "weight_decay": 5e-4, "n_ctx": 4, "n_boot": 50}
    cfg.update(over)
    return cfg


def test_experiment_end_to_end_on_synthetic_data_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))
    out = vx.run_experiment(_cfg(), None, tmp_path / "state", progress=False, log=lambda *_: None)
    table = __import__("pandas").DataFrame(out["rows"])
    assert set(table["setting"]) == {"main", "ablation", "aggregation", "knowledge"}
    main = table[table.setting == "main"]
    assert len(main) == 12 and set(main.metric) == {"accuracy", "macro_f1"}
    assert table["value"].between(0, 1).all()
    vip = main[main.method.str.startswith("ViP")]
    assert (vip.seeds == 2).all() and vip.seed_sd.notna().all()
    zs = main[main.method.str.startswith("zero-shot, class names")]
    assert (zs.seeds == 1).all() and (zs.ci_low <= zs.value).all() and (zs.value <= zs.ci_high).all()
    assert {a["class"] for a in out["attention"]} == {"NORMAL", "PNEUMONIA"}
    done = sorted((tmp_path / "state").glob("*.json"))
    assert len(done) == 3 + 2 * 9  # deterministic methods once, trained ones per seed
    stamp = {p.name: p.stat().st_mtime_ns for p in done}
    again = vx.run_experiment(_cfg(), None, tmp_path / "state", progress=False, log=lambda *_: None)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "state").glob("*.json")} == stamp  # nothing re-run
    assert again["rows"] == out["rows"]


def test_replaced_knowledge_uses_the_ablation_texts():
    bb = TinyBackbone()
    sym = load_symptoms("chest_xray")
    model = vx.build_classifier(vx.METHODS["vip_antonym"], bb, sym, "chest X-ray")
    assert model.texts[1] == sym.ablations["antonym"] and model.texts[0] == sym.symptoms["NORMAL"]
    coop = vx.build_classifier(vx.METHODS["coop"], bb, sym, "chest X-ray")
    assert model.context.vectors.shape[0] == 4 and coop.context.vectors.shape[0] == 16 and coop.texts == [["normal chest"], ["pneumonia"]]
    zs = vx.build_classifier(vx.METHODS["zs_names"], bb, sym, "chest X-ray")
    assert zs.texts == [["a chest X-ray image of normal chest"], ["a chest X-ray image of pneumonia"]]
    with pytest.raises(ConfigError, match="unknown setting"):
        vx.methods_for(["main", "table9"])


def test_derm7pt_fixture_runs_with_its_symptoms(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))
    root = fx.write(tmp_path / "data", fx.derm_files(), "release_v0.zip")
    cfg = _cfg(datasets=["derm7pt"], settings=["main"], seeds=[1], epochs=1)
    out = vx.run_experiment(cfg, root, tmp_path / "state", progress=False, log=lambda *_: None)
    table = __import__("pandas").DataFrame(out["rows"])
    assert set(table.dataset) == {"derm7pt"} and len(table) == 12


def test_long_run_writes_a_tidy_committed_run(tmp_path, monkeypatch):
    from medad.results import load_run

    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))
    cfg = _cfg(settings=["main", "knowledge"], seeds=[1], epochs=1, schedule="tiny test schedule",
               backbones=[TinyBackbone()], limits={"tiny-test": {"settings": ["main"]}})
    monkeypatch.setattr(vx, "profile_config", lambda profile: cfg)
    folder = vx.run_long("tiny", None, "unit-run", 1, tmp_path / "results", tmp_path / "state")
    run = load_run("vip", "unit-run", tmp_path / "results")
    assert run.kind == "long-cpu" and run.provenance["schedule"] == "tiny test schedule"
    assert set(run.table.setting) == {"main"}  # the limit left out the knowledge setting
    assert {"code_sha256", "commit", "data", "seconds"} <= set(run.provenance)
    attention = __import__("pandas").read_csv(folder / "attention.csv")
    assert set(attention["class"]) == {"NORMAL", "PNEUMONIA"} and np.allclose(attention.groupby("class").weight.sum(), 1, atol=1e-4)
    plan = vx.plan({**cfg, "backbones": ["a", "b"], "limits": {"b": {"datasets": ["x"], "settings": ["main"]}},
                    "datasets": ["x", "y"], "settings": ["main", "ablation"], "seeds": [1, 2], "ablation_seeds": [1]})
    assert plan[0][:2] == ("x", "a") and plan[-1][1] == "b" and {d for d, b, *_ in plan if b == "b"} == {"x"}
    assert [s for d, b, k, s in plan if (d, b, k) == ("y", "a", "cop")] == [1]
    assert [s for d, b, k, s in plan if (d, b, k) == ("y", "a", "vip")] == [1, 2]


def test_a_run_cut_short_is_tabulated_and_labelled_partial(tmp_path, monkeypatch):
    from medad.results import load_run

    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))
    cfg = _cfg(settings=["main"], seeds=[1, 2], epochs=1, schedule="s", backbones=[TinyBackbone()])
    monkeypatch.setattr(vx, "profile_config", lambda profile: dict(cfg))
    vx.run_long("tiny", None, "full", 1, tmp_path / "results", tmp_path / "state")
    (tmp_path / "state" / "full" / "chest_xray__tiny-test__vip__2.json").unlink()  # as if cut short before it
    vx.run_long("tiny", None, "full", 1, tmp_path / "results", tmp_path / "state", finished_only=True)
    run = load_run("vip", "full", tmp_path / "results")
    assert run.provenance["schedule"] == "s; PARTIAL: 8 of 9 runs finished"
    vip = run.table[run.table.method.str.startswith("ViP")]
    assert (vip.seeds == 1).all()
    assert not (tmp_path / "state" / "full" / "chest_xray__tiny-test__vip__2.json").exists()  # nothing was trained


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
