"""The early-gastric-cancer chapter on the shared harness: exact resumption, refusal, one entry point, parts side by side."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from medad.errors import ConfigError
from medad.experiment.record import RecordingOpener, RunRecord
from medad.train import egc_experiment as E
from medad.train.egc_data import PARTS, load_data
from medad.train.egc_tasks import CLS_SELECT, SEG_SELECT, epoch_history, train_classifier, train_segmenter

BOUNDED = {"accuracy", "precision", "recall", "specificity", "f1", "auc", "attention_iou", "pointing_game",
           "accuracy_overlays_blanked", "p_lesion_clean", "p_lesion_lesion_blurred", "recall_lesion_blurred",
           "pixel_accuracy", "iou", "dice", "two_stage_dice_lesion", "two_stage_normal_flagged"}


def tiny(profile: str = "long_cpu", **kw):
    from medad import profiles

    given = dict(image_size=64, frozen_stages=6, train_images=24, val_images=12, test_images=12, cls_epochs=2,
                 cls_batch_size=8, seg_size=32, seg_channels=[4, 8], seg_train_images=8, seg_val_images=4,
                 seg_test_images=4, seg_epochs=2, seg_batch_size=4, seg_variants=["unet", "ca-unet"], seg_seeds=[0],
                 seeds=[0], extra_archs=[], cls_methods=["gain", "gain-am"], bootstrap=100, precision="fp32",
                 channels_last=False, threads=1, device="cpu")
    given.update(kw)
    return profiles.resolve_named("egc", profile, given)


@pytest.fixture(scope="module")
def prepared():
    cfg = tiny()
    data = load_data(cfg, RecordingOpener(None), PARTS, progress=False)  # synthetic stand-ins
    return data, E.compute_trunks(cfg, "effnet-lite0", data["cls"], "cpu", progress=False)["trunks"]


def _same_final_state(a, b) -> None:
    ca, cb = (torch.load(p, weights_only=False) for p in (a, b))
    assert ca["state"]["step"] == cb["state"]["step"]
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    assert [h["loss"] for h in ca["state"]["history"]] == [h["loss"] for h in cb["state"]["history"]]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_classifier_resumes_exactly_and_refuses_other_settings(tmp_path, prepared, precision):
    data, trunks = prepared
    cfg = tiny(precision=precision, channels_last=precision == "bf16")
    whole = train_classifier(cfg, "effnet-lite0", "gain", 0, data["cls"], trunks, tmp_path / "a.pt", progress=False)
    train_classifier({**cfg, "cls_epochs": 1}, "effnet-lite0", "gain", 0, data["cls"], trunks, tmp_path / "b.pt",
                     progress=False)  # "interrupted" after its first epoch
    torch.manual_seed(123)  # a new process: other global random state
    resumed = train_classifier(cfg, "effnet-lite0", "gain", 0, data["cls"], trunks, tmp_path / "b.pt", progress=False)
    _same_final_state(tmp_path / "a.pt", tmp_path / "b.pt")
    assert epoch_history(resumed, CLS_SELECT) == epoch_history(whole, CLS_SELECT)
    assert [h["epoch"] for h in epoch_history(resumed, CLS_SELECT)] == [1, 2]
    assert len(epoch_history(whole, CLS_SELECT)[0]["val_key"]) == 2  # (AUC, log-likelihood): ties of AUC broken
    with pytest.raises(ConfigError, match=r"other settings.*batch_size: 8 -> 4"):  # the old tag left the batch size out
        train_classifier({**cfg, "cls_batch_size": 4}, "effnet-lite0", "gain", 0, data["cls"], trunks,
                         tmp_path / "b.pt", progress=False)
    other = "fp32" if precision == "bf16" else "bf16"
    with pytest.raises(ConfigError, match=f"precision: {precision} -> {other}"):
        train_classifier({**cfg, "precision": other}, "effnet-lite0", "gain", 0, data["cls"], trunks, tmp_path / "b.pt",
                         progress=False)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_segmenter_resumes_exactly_and_refuses_another_model(tmp_path, prepared, precision):
    data, _ = prepared
    cfg = tiny(precision=precision, channels_last=precision == "bf16")
    whole = train_segmenter(cfg, "ca-unet", 0, data["seg"], tmp_path / "a.pt", progress=False)
    train_segmenter({**cfg, "seg_epochs": 1}, "ca-unet", 0, data["seg"], tmp_path / "b.pt", progress=False)
    torch.manual_seed(7)
    resumed = train_segmenter(cfg, "ca-unet", 0, data["seg"], tmp_path / "b.pt", progress=False)
    _same_final_state(tmp_path / "a.pt", tmp_path / "b.pt")
    assert epoch_history(resumed, SEG_SELECT) == epoch_history(whole, SEG_SELECT)
    with pytest.raises(ConfigError, match="model: ca-unet -> unet"):
        train_segmenter(cfg, "unet", 0, data["seg"], tmp_path / "b.pt", progress=False)
    with pytest.raises(ConfigError, match=r"lr: 0\.002 -> 0\.001"):
        train_segmenter({**cfg, "seg_lr": 1e-3}, "ca-unet", 0, data["seg"], tmp_path / "b.pt", progress=False)


def _record(tmp_path, name, profile="long_cpu", **kw):
    return RunRecord("egc", profile, name, resolved=tiny(profile, **kw), state_root=tmp_path / "state",
                     results_root=tmp_path / "results", code_files=E.CODE_FILES)


def test_one_entry_point_writes_a_committed_run_and_refuses_to_overwrite_another(tmp_path):
    """run_experiment (what the notebook and the command line call) -> RunRecord.write, on synthetic data."""
    rec = _record(tmp_path, "tiny-run", precision="bf16", channels_last=True)
    out = E.run_experiment(rec.config, rec.opener, rec.state, "cpu", progress=False)
    folder = E.write_committed(rec, out)
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["kind"] == "smoke"  # synthetic data is never a headline
    assert prov["run_id"] == rec.run_id and prov["precision"] == "bf16 autocast, channels-last"
    assert prov["schedule"].endswith("bf16 autocast, channels-last") and prov["parameters"]["cls_batch_size"] == 8
    used = {(d["dataset"], d["split"]): d["n_used"] for d in prov["data"]}
    assert used[("endoscopy_ad", "train")] == 24 and used[("kvasir_seg", "test")] == 4  # subsets actually used
    assert set(prov["timing_seconds"]) == {"cls-gain-seed0", "cls-gain-am-seed0", "seg-unet-seed0", "seg-ca-unet-seed0"}
    assert prov["steps"]["cls-gain-seed0"] == 2 * 3  # 2 epochs of 24 images in batches of 8
    table = pd.read_csv(folder / "table.csv")
    assert {"test", "test, two-stage", E.PAIRED_SETTING} <= set(table["setting"])
    bounded = table[table["metric"].isin(BOUNDED) & table["ci_low"].notna() & (table["setting"] != E.PAIRED_SETTING)]
    assert len(bounded) > 20 and ((bounded["ci_low"] >= 0) & (bounded["ci_high"] <= 1)).all()
    with np.load(folder / "per_image.npz") as z:
        assert len(z["cls_gain_seed0_prob"]) == 12 and len(z["seg_ca-unet_seed0_dice"]) == 4
    # the same name resumes (finished units are restored, not retrained) ...
    again = _record(tmp_path, "tiny-run", precision="bf16", channels_last=True)
    assert again.run_id == rec.run_id
    rerun = E.run_experiment(again.config, again.opener, again.state, "cpu", progress=False)
    assert rerun["timing"] == pytest.approx(out["timing"], abs=0.2)  # restored, not retrained (which would take longer)
    assert pd.DataFrame(rerun["rows"]).equals(pd.DataFrame(out["rows"]))
    # ... but not under other settings, and another run never writes into this run's folder
    with pytest.raises(ConfigError, match="other settings.*cls_batch_size: 8 -> 4"):
        _record(tmp_path, "tiny-run", precision="bf16", channels_last=True, cls_batch_size=4)
    import shutil

    shutil.rmtree(tmp_path / "state")
    with pytest.raises(ConfigError, match="already holds another run's results"):
        _record(tmp_path, "tiny-run")


def test_parts_fill_checkpoints_side_by_side_then_one_run_evaluates(tmp_path, capsys):
    parts = {}
    for part in PARTS:  # two processes, one per part, into one run's checkpoints
        rec = _record(tmp_path, "sides")
        parts[part] = E.run_experiment(rec.config, rec.opener, rec.state, "cpu", progress=False, parts=(part,))
        rec.note_invocation()
    assert parts["classification"]["seg_per_seed"] == {} and parts["classification"]["pipeline"] is None
    assert set(parts["segmentation"]["seg_per_seed"]) == {"unet", "ca-unet"} and parts["segmentation"]["per_seed"] == {}
    checkpoints = sorted(p.name for p in (tmp_path / "state" / "egc" / "sides" / "checkpoints").iterdir())
    assert checkpoints == ["cls-gain-am-seed0.pt", "cls-gain-seed0.pt", "seg-ca-unet-seed0.pt", "seg-unet-seed0.pt"]
    final = _record(tmp_path, "sides")
    folder = E.run_long(final)
    prov = json.loads((folder / "provenance.json").read_text())
    # every unit was restored from its finished checkpoint: the training times are the part runs'
    assert prov["timing_seconds"] == pytest.approx({**parts["classification"]["timing"], **parts["segmentation"]["timing"]},
                                                   abs=0.2)
    assert len(prov["invocations"]) == 3
    assert prov["seconds"] == pytest.approx(sum(i["seconds"] for i in prov["invocations"]), abs=0.15)
    assert "test, two-stage" in set(pd.read_csv(folder / "table.csv")["setting"])
    with pytest.raises(ConfigError, match="parts must be among"):
        E.run_experiment(final.config, final.opener, None, "cpu", progress=False, parts=("pipeline",))


def test_a_rehearsal_prints_step_times_and_writes_nothing(tmp_path, capsys):
    rec = _record(tmp_path, "rehearsal", profile="rehearse", seg_variants=["unet"], cls_methods=["gain"])
    assert rec.kind == "rehearsal"
    assert E.run_long(rec) is None
    printed = capsys.readouterr().out
    assert "cls-gain-seed0: 6 steps" in printed and "s/step" in printed and "nothing written under results/" in printed
    assert not (tmp_path / "results" / "egc" / "rehearsal").exists()
