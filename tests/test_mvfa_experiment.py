"""MVFA's experiment on the shared harness (issues 17, 18, 20 item 7), on a tiny CNN backbone and synthetic data.

- the official checkpoint score by hand; the loop keeps the official selection as a second key of the same run;
- which adapters learn on image-level batches of a mixed run (the official rule, exact, Adam state included);
- a resumed unit equals an uninterrupted one; a resume under other settings is refused, naming the setting;
- one entry point writes a committed run through RunRecord; a quick-profile run is never a headline; unknown
  stages are refused; the rehearsal is the full profile with only the counts capped.
"""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from test_mvfa_protocol import _TinyCNN

from medad import profiles
from medad.errors import ConfigError
from medad.experiment.record import RecordingOpener, RunRecord, RunState, run_kind
from medad.models import mvfa as M
from medad.train import mvfa_experiment as X
from medad.train import mvfa_tasks as T


class _TinyText(_TinyCNN):
    """The tiny CNN with fixed maps of its two levels into the 6-wide joint space (for the frozen baselines)."""

    is_standin, protocol, weights_source = False, "corrected", "random (test)"

    def project_tokens(self, tokens, level):
        g = torch.Generator().manual_seed(level)
        return tokens @ torch.randn(tokens.shape[-1], self.embed_dim, generator=g)


def _fake_text(backbone, object_name, batch=128):
    g = torch.Generator().manual_seed(sum(map(ord, object_name)))
    return torch.nn.functional.normalize(torch.randn(2, backbone.embed_dim, generator=g), dim=1)


@pytest.fixture
def tiny(monkeypatch):
    backbone = _TinyText().freeze()
    monkeypatch.setattr(M, "text_matrix", _fake_text)
    monkeypatch.setattr(X, "load_backbone_for", lambda cfg, device="cpu": backbone)
    return backbone


def tiny_config(**kw):
    given = dict(levels=[1, 2], map_size=8, image_size=32, datasets=["lgg_brain_ad", "chest_xray"], k=2, seeds=[0],
                 epochs=2, check_every=1, batch_size=4, test_images=12, select_images=6, full_normal_images=4,
                 eval_batch=8, official_selection_seeds=1, zero_epochs=1, zero_check_every=1, zero_train_per_class=3,
                 zero_select_per_dataset=6, n_boot=50, checkpoint_every=1, stages=["few_shot", "baselines"])
    given.update(kw)
    return profiles.resolve_named("mvfa", "long_cpu", given)


def _opener(n=24):
    return RecordingOpener(synthetic=True, n_synthetic=n)


# ---- item 7: the official checkpoint selection ---------------------------------------------------------------


def test_official_score_is_pixel_plus_image_auc_after_test_set_min_max_by_hand():
    # two images, one level, 2 x 2 maps; A normal, B abnormal with lesion pixel (0, 0)
    zero = np.array([[[[0, 0], [0, 0.2]]], [[[0, 0.4], [0, 1.0]]]])
    few = np.array([[[[0.5, 0.5], [0.5, 0.5]]], [[[0.5, 0.5], [0.5, 2.5]]]])
    scores = M.BranchScores(zero, few, np.zeros((2, 1)), np.zeros((2, 1)))
    masks = torch.tensor([[[0, 0], [0, 0]], [[1, 0], [0, 0]]], dtype=torch.bool)
    # min-max over the two images: zero stays, few -> A 0, B [[0, 0], [0, 1]]; the 0.5/0.5 mix:
    # A [[0, 0], [0, 0.1]], B [[0, 0.2], [0, 1.0]]. Image score = max: 0.1 < 1.0, image AUC 1.
    # Pixels: the lesion pixel scores 0; the 7 normal ones 0, 0, 0, 0.1 (A) and 0.2, 0, 1.0 (B): it ties
    # four and beats none, pixel AUC 4 x 0.5 / 7
    assert T.official_score(scores, np.array([0, 1]), masks) == pytest.approx(1.0 + 2 / 7)
    # without masks: the det branches, min-max each, 0.5/0.5: A 0.5, B 0.5 -> a tie, image AUC 0.5
    det = M.BranchScores(np.zeros((2, 1, 2, 2)), np.zeros((2, 1, 2, 2)), np.array([[0.1], [0.3]]),
                         np.array([[2.0], [1.0]]))
    assert T.official_score(det, np.array([0, 1]), None) == pytest.approx(0.5)


def test_the_official_selection_is_a_second_key_of_the_same_run(tiny):
    cfg = tiny_config(epochs=3)
    prep = X.prepare(_opener(), "lgg_brain_ad", tiny, cfg)
    value, _ = X.few_shot(prep, tiny, 2, 0, cfg, official=True)
    train = value["training"]
    official = [v[T.OFFICIAL] for v in train["validations"]]
    assert len(official) == 3  # the test set scored after every epoch, as train_few.py does
    best = train["official"]["best"][T.OFFICIAL]
    assert best["value"] == max(official) and best["epoch"] == 1 + official.index(max(official))  # earliest of ties
    blk = value["blocks"][0]
    # the row re-scores the kept weights: its image AUC + pixel AUC is the score that chose them
    got = [X.image_auc(blk["labels"], blk["scores"]["MVFA, checkpoint chosen on test (official)"]),
           X.PixelPairs(**blk["pixel"]["MVFA, checkpoint chosen on test (official)"]).auc()]
    assert sum(got) == pytest.approx(best["value"], abs=1e-9)
    assert "MVFA, checkpoint chosen on validation (same run)" in blk["scores"]
    with pytest.raises(ConfigError, match="check_every must be 1"):
        X.few_shot(prep, tiny, 2, 0, tiny_config(check_every=2), official=True)


# ---- item 4 on the loop: which adapters learn on image-level batches ------------------------------------------------


def _data(backbone, pixel: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(4, 8, 8, generator=g) > 0.7) if pixel else None
    return T.TrainData("d", torch.randn(4, 3, 8, 8, generator=g), torch.tensor([0, 1, 0, 1]), masks,
                       _fake_text(backbone, "x"))


def _step_like_the_loop(task, batch):
    opts = task.optimizers()
    for o in opts:
        o.zero_grad(set_to_none=True)
    task.loss(batch, None)["loss"].backward()
    for o in opts:
        o.step()


def test_a_mixed_run_steps_the_seg_adapters_only_on_batches_with_masks_as_the_official_two_adams(tiny):
    data = [_data(tiny, True, 1), _data(tiny, False, 2)]
    task = T.AdapterTask(M.MVFA(tiny, seed=0), data, lr=1e-3, batch_size=4)
    assert task.optimizers() == [task.adapter_optimizers.seg, task.adapter_optimizers.det]
    only_det = T.AdapterTask(M.MVFA(tiny, seed=0), data[1:], lr=1e-3, batch_size=4)
    assert only_det.optimizers() == [only_det.adapter_optimizers.det]
    reference = M.MVFA(tiny, seed=0)  # official train_few.py / train_zero.py: two Adams, det only without masks
    ref_opt, loss = reference.optimizers(1e-3), M.MVFALoss()
    for di, pixel in ((1, False), (0, True), (1, False)):
        index = np.arange(4)
        _step_like_the_loop(task, (di, index))
        d = data[di]
        ref_opt.zero_grad()
        loss(reference(d.images), d.text, d.labels, d.masks).backward()
        ref_opt.step(pixel)
        for name, p in task.model.state_dict().items():
            assert torch.equal(p, reference.state_dict()[name]), (name, di)
    seg_state = task.adapter_optimizers.seg.state
    assert {int(s["step"]) for s in seg_state.values()} == {1}  # the one batch with masks, its Adam steps counted once
    assert all(p.requires_grad for p in task.model.adapter_parameters("seg"))  # switched back after each forward


# ---- resumption -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_resumed_unit_equals_an_uninterrupted_one_and_other_settings_are_refused(tiny, tmp_path, precision):
    fast = dict(precision=precision, channels_last=precision == "bf16")
    cfg = tiny_config(epochs=2, **fast)
    prep = X.prepare(_opener(), "lgg_brain_ad", tiny, cfg)
    whole, _ = X.few_shot(prep, tiny, 2, 3, cfg, checkpoint=tmp_path / "a.pt")
    X.few_shot(prep, tiny, 2, 3, tiny_config(epochs=1, **fast), checkpoint=tmp_path / "b.pt")  # stopped after epoch 1
    torch.manual_seed(99)  # a new process: other global random state
    resumed, _ = X.few_shot(prep, tiny, 2, 3, cfg, checkpoint=tmp_path / "b.pt")
    a, b = whole["blocks"][0], resumed["blocks"][0]
    assert set(a["scores"]) == set(b["scores"])
    assert all(np.array_equal(a["scores"][m], b["scores"][m]) for m in a["scores"])
    assert whole["training"]["loss"] == resumed["training"]["loss"]
    with pytest.raises(ConfigError, match=r"other settings.*lr: 0.001 -> 0.002"):
        X.few_shot(prep, tiny, 2, 3, tiny_config(epochs=2, lr=2e-3, **fast), checkpoint=tmp_path / "b.pt")


# ---- the entry point and the run record -----------------------------------------------------------------------


def test_one_entry_point_writes_a_committed_run_and_refuses_to_overwrite_another(tiny, tmp_path):
    def record(name, **kw):
        rec = RunRecord("mvfa", "long_cpu", name, resolved=tiny_config(**kw), state_root=tmp_path / "state",
                        results_root=tmp_path / "results", code_files=X.CODE_FILES, resumable=("stages",))
        rec.opener.synthetic_only, rec.opener.n_synthetic = True, 24
        return rec

    rec = record("tiny-run", stages=["few_shot", "baselines", "projector"])
    out = X.run_experiment(rec.config, rec.opener, rec.state, "cpu", progress=False)
    folder = X.write_committed(rec, out)
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["kind"] == "smoke" and prov["run_id"] == rec.run_id
    assert prov["precision"] == "bf16 autocast, channels-last"  # the long_cpu profile's arithmetic
    assert prov["protocol"] == "corrected" and "corrected" in prov["protocol_description"]
    assert "config" not in prov and prov["parameters"]["epochs"] == 2  # the one provenance schema
    used = {(d["dataset"], d["split"]): d.get("n_used") for d in prov["data"]}
    assert used[("lgg_brain_ad", "test")] == 12  # the subset actually used, not the split's size
    table = pd.read_csv(folder / "table.csv")
    mvfa = table[(table.method == "MVFA [tiny-cnn]") & (table.dataset == "lgg_brain_ad")]
    assert set(mvfa.metric) == {"image AUC", "pixel AUC"}
    ranged = table.dropna(subset=["ci_low"])
    ranged = ranged[~ranged.method.str.contains(" minus ")]  # AUCs: bounded intervals (differences may be negative)
    assert len(ranged) and ((ranged.ci_low >= 0) & (ranged.ci_high <= 1) & (ranged.ci_low <= ranged.ci_high)).all()
    assert (table[table.dataset == "average"].ci_low.isna()).all()  # averages: no interval (no Student-t either)
    # paired differences: the same images and seeds, so the value is the difference of the two rows' values
    pick = lambda m, metric: table[(table.dataset == "lgg_brain_ad") & (table.method == f"{m} [tiny-cnn]")  # noqa: E731
                                   & (table.metric == metric)].iloc[0]
    for metric in ("image AUC", "pixel AUC"):
        diff = pick("MVFA minus projector-only (April-GAN-style)", f"{metric} difference")
        expected = pick("MVFA", metric).value - pick("projector-only (April-GAN-style)", metric).value
        assert diff.value == pytest.approx(expected, abs=2e-6) and diff.ci_low <= diff.value <= diff.ci_high
    # the same name resumes: every unit is done, nothing is trained again
    again = record("tiny-run", stages=["few_shot"])
    assert again.run_id == rec.run_id and set(again.state.finished_units()) == set(out["units"])
    # a later invocation may run further stages of the same run ...
    assert record("tiny-run", stages=["zero_shot"]).run_id == rec.run_id
    # ... but other settings are refused by name, and another run never writes into this run's folder
    with pytest.raises(ConfigError, match="other settings.*epochs: 2 -> 3"):
        record("tiny-run", epochs=3)
    import shutil
    shutil.rmtree(tmp_path / "state")
    with pytest.raises(ConfigError, match="already holds another run's results"):
        record("tiny-run")


def test_zero_shot_leave_one_out_opens_the_held_out_test_split_only_after_training(tiny):
    opener = _opener(16)
    value = X.zero_shot(opener, "chest_xray", ["lgg_brain_ad", "chest_xray", "endoscopy_ad"], tiny, tiny_config(), 0)
    held = [i for i, (name, _) in enumerate(opener.opened) if name == "chest_xray"]
    assert [opener.opened[i][1] for i in held] == ["test"] and held == [len(opener.opened) - 1]
    assert value["training"]["sources"] == ["lgg_brain_ad", "endoscopy_ad"] and value["training"]["per_class"] == 3
    with pytest.raises(ConfigError, match="at least one other dataset"):
        X.zero_shot(opener, "chest_xray", ["chest_xray"], tiny, tiny_config(), 0)


def test_quick_profile_runs_are_never_a_headline_and_unknown_stages_are_refused(monkeypatch, tmp_path, capsys):
    import medad.paths

    assert run_kind("quick", "cpu", synthetic=False) == "smoke"  # real data, quick profile: still not a headline
    assert run_kind("long_cpu", "cpu", synthetic=False) == "long-cpu"
    monkeypatch.setattr(medad.paths, "RESULTS_DIR", tmp_path / "results")
    seen = {}

    def fake(cfg, opener, state, device, progress=True, finished_only=False):
        seen["stages"] = cfg["stages"]
        backbone = SimpleNamespace(name="b", weights_source="w", is_standin=True, protocol="corrected",
                                   protocol_description=lambda: "corrected")
        from medad.results import row
        return {"units": {"few_shot/d/0": {}}, "rows": [row("d", "s", "MVFA [STAND-IN]", "image AUC", 0.5)],
                "backbone": backbone, "planned": ["few_shot/d/0"], "unfinished": []}

    monkeypatch.setattr(X, "run_experiment", fake)
    args = ["--profile", "quick", "--checkpoints", str(tmp_path / "state")]
    assert X.main([*args, "--name", "q1", "--stages", "few_shot,baselines"]) in (None, 0)
    prov = json.loads((tmp_path / "results" / "mvfa" / "q1" / "provenance.json").read_text())
    assert prov["kind"] == "smoke" and seen["stages"] == ["few_shot", "baselines"]
    assert X.main([*args, "--name", "q2", "--stages", "few_shot,typo"]) == 2
    assert "typo" in capsys.readouterr().err and not (tmp_path / "results" / "mvfa" / "q2").exists()
    assert X.main([*args, "--name", "q3", "--datasets", "lgg_brain_ad,mnist"]) == 2
    assert "mnist" in capsys.readouterr().err


def test_the_rehearsal_is_the_full_profile_with_only_the_counts_capped():
    data = profiles.load("mvfa")
    full, rehearse = data["full"], data["rehearse"]
    counts = {"k", "seeds", "epochs", "zero_epochs", "test_images", "select_images", "full_normal_images",
              "zero_train_per_class", "zero_select_per_dataset", "zero_seeds", "projector_seeds", "tsne_images",
              "n_boot", "k_curve", "k_curve_seeds", "max_steps", "datasets"}
    changed = {key for key in set(full) | set(rehearse) if full.get(key) != rehearse.get(key)}
    assert changed <= counts | {"weights", "eval_batch"}, changed - counts  # eval_batch changes no number
    assert rehearse["weights"] == "random" and full["weights"] is None  # random CLIP weights, labelled as such
    for key in counts & changed:  # capped, never raised
        a, b = full.get(key), rehearse[key]
        assert (len(b) <= len(a)) if isinstance(a, list) else (a is None or b <= a), key
    assert full.get("max_steps") is None and rehearse["max_steps"] >= 1  # a few steps of each unit
    rec = RunRecord("mvfa", "rehearse", None, resolved=profiles.resolve_named("mvfa", "rehearse"))
    assert rec.kind == "rehearsal"


def test_every_driver_parameter_is_declared_and_read_without_a_fallback():
    import inspect
    import re

    source = inspect.getsource(X) + inspect.getsource(T)
    assert not re.search(r"cfg\.get\(", source)
    read = set(re.findall(r'cfg\["([a-z_]+)"\]', source))
    assert read <= set(profiles.schema("mvfa")), read - set(profiles.schema("mvfa"))


def test_a_run_cut_short_is_tabulated_from_its_finished_units_and_says_what_did_not_run(tiny, tmp_path):
    def record(**kw):
        rec = RunRecord("mvfa", "long_cpu", "cut-run", resolved=tiny_config(datasets=["lgg_brain_ad"], **kw),
                        state_root=tmp_path / "state", results_root=tmp_path / "results", code_files=X.CODE_FILES,
                        resumable=("stages",))
        rec.opener.synthetic_only, rec.opener.n_synthetic = True, 24
        return rec

    empty = record(stages=["few_shot"])
    with pytest.raises(ConfigError, match="no unit has finished yet"):
        X.write_committed(empty, X.run_experiment(empty.config, empty.opener, empty.state, "cpu", progress=False,
                                                  finished_only=True))
    first = record(stages=["few_shot"])
    X.run_experiment(first.config, first.opener, first.state, "cpu", progress=False)
    later = record(stages=["few_shot", "baselines"])  # stages may grow; the baselines never ran
    out = X.run_experiment(later.config, later.opener, later.state, "cpu", progress=False, finished_only=True)
    assert list(out["units"]) == ["few_shot/lgg_brain_ad/0"] and out["unfinished"] == ["baselines/lgg_brain_ad/None"]
    prov = json.loads((X.write_committed(later, out) / "provenance.json").read_text())
    assert prov["units_not_run"] == ["baselines/lgg_brain_ad/None"]
    assert prov["schedule"].endswith("finished: few_shot (seed 0); cut short: 1 of 2 planned units not run")
